"""The autoscaling optimizer: a calibrated simulator, load traces, baselines, learned policies and the offline optimum."""
