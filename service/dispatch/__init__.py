"""Price-aware dispatch: day-ahead prices, tariffs, plant models and the MILP plan (docs/DISPATCH.md)."""
