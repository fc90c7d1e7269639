"""Locust traffic scenarios and the `recserve loadtest` experiment runner."""
