"""Mixture-of-experts layers: routing, expert GEMMs and their runners, and the Triton
fused-MoE configuration files in SGLang's format."""
