"""The smart-traffic use case, written against fogmesh's public API.

* ``app`` — the traffic app: train, tune, export and serve the junction models
  (the vehicle counter and the flow forecaster);
* ``forecast_data`` — the forecaster's training data (recorded history, windows);
* ``models`` — the torch models and their fitting; ``occupancy`` — camera
  occupancy frames; ``control`` — the signal controller; ``signals`` — camera
  frames and the ``signal_plan`` stream function;
* ``sim`` — the SUMO simulation as a scenario plugin (``functions.traffic.sim:plugin``).
"""
