"""Plugins for looking at what the agent computes, without touching the datapath."""
