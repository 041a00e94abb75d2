"""The operator console: server-rendered pages under /ui on the API's own app (docs/UI.md)."""
