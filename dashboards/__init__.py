"""Live dashboards (Panel + HoloViews)."""
