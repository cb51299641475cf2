"""Normalizing flows (FlowSpec) to flow_inverse and flow_forward graphs."""
