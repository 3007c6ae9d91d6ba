"""The supervised defect-kind model and what it is trained on.

  labels    label sets read back as class masks (COCO, LabelMe, VOC, YOLO, mask PNGs, MVTec)
  review    a simulated review of pre-labels (labelling-effort benchmark)
  config    its settings (``SupervisedConfig``), YAML load/save
  model     ``SupervisedModel``: a U-Net, image -> background + one logit map per defect kind
  verdict   probabilities -> regions, and the two-stage verdict (GANomaly, then the kind model)
  dataset   a label set loaded once at the model size, the stratified split
  train     ``fit_supervised``: steps, validation, best model, resume (``aoiflow supervise train``)
  metrics   pixel, region and image metrics on plain arrays
  evaluate  ``evaluate_supervised`` (``aoiflow supervise test``); report: its plots and page

Nothing is imported here, so reading labels never pulls in torch or the model code.
"""
