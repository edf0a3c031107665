"""Scoring layer: the paper's metric and the reports built on it.

``scorer`` (strict span match per type, Avg over the five types, micro-5;
``tokner.paper_ner_scorer.v1``), ``evaluation`` (``tokner evaluate``, ``score-docs``) and
``report`` (``tokner compare``: tables, confusion tables, chart, displaCy error page).
"""
