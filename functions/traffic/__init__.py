"""The smart-traffic use case, written against fogmesh's public API.

* ``app`` — the traffic app: train, tune, export and serve the junction models
  (the vehicle counter and the flow forecaster);
* ``models`` — the torch models and their fitting; ``occupancy`` — camera
  occupancy frames; ``signals`` — the signal controller and its stream function;
* ``sim`` — the SUMO simulation as a scenario plugin (``functions.traffic.sim:plugin``).
"""
