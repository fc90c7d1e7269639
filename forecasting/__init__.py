"""Forecasting and capacity planning: request-rate history, Prophet forecasts, replica plans and backtests."""
