"""Label sets read back as per-pixel class masks, for training the supervised defect-kind model.

Six layouts are read: COCO, LabelMe, Pascal VOC, YOLO (boxes or polygons), mask PNGs and the
MVTec folder layout (``test/<kind>/`` with ``ground_truth/<kind>/`` masks or ``annotations_bbox``
boxes). Geometry is kept in corner coordinates of the actual image (pixel (x, y) spans
[x, x + 1) x [y, y + 1), as COCO and YOLO use), and a pixel belongs to a polygon or a box when its
centre lies inside. Masks are drawn only when asked for (``LabelledSample.mask``): a set of
thousands of images holds only outlines in memory.

Written with json, xml.etree, PyYAML, OpenCV and Pillow; pycocotools (BSD) only decodes COCO RLE.
Problems that spoil one file are collected in ``LabelSet.warnings`` and the file is skipped;
problems that spoil the set raise ``LabelError``, naming the file.

One module per layout (``coco``, ``labelme``, ``voc``, ``yolo``, ``masks``, ``mvtec``) over ``core``
(geometry, samples, sets, finding images); ``read`` tells the layout from what is on disk, builds
the class table across files and is ``read_labels``.
"""

from aoiflow.supervised.labels.core import (DEEPPCB_TYPES, FORMATS, MASK_SUFFIXES, LabelError, LabelledSample, LabelSet,
                                            Shape)
from aoiflow.supervised.labels.read import read_labels

__all__ = ["DEEPPCB_TYPES", "FORMATS", "MASK_SUFFIXES", "LabelError", "LabelSet", "LabelledSample", "Shape",
           "read_labels"]
