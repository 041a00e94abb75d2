"""Billing-grade heat accounting: register energy, Danish surplus-heat rules, settlements, KPIs."""
