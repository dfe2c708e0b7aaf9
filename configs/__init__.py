"""Run configs (``--config=configs/<name>.py[:variant]``) and what they share (``common.py``)."""
