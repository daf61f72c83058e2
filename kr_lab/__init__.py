"""kr's lab: the blog post's cluster on one machine, for the demo and the end-to-end tests.

Today it holds the cluster's API objects and the API-side demo; the network-namespace datapath arrives
with the lab issue.
"""
