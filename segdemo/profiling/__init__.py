"""Profiling: the always-on spans every stage records (`spans`), their Chrome trace JSON (`trace`) and their
Plotly figures (`timeline`).
"""
