"""The supervised defect-kind model: label sets read back (``labels``), simulated review
(``review``), and the model trained on reviewed labels.

Nothing is imported here, so reading labels never pulls in torch or the model code.
"""
