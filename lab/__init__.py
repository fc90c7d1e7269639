"""The offline lab: the autoscaling simulator, the walk-forward backtest, its report and the trace
generator, driven by `recserve fit / forecast / backtest / plot / gen-traces`."""
