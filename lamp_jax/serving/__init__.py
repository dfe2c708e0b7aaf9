"""Serving a policy over a websocket, and the client that talks to it.

``codec`` (msgpack + numpy arrays, no pickle) and ``client`` import only numpy, msgpack and websockets: the LIBERO
environment (its own virtual environment, no JAX) imports them. ``server`` holds the policy and is started with
``python -m lamp_jax.serve``.
"""
