"""The napari plugin: reader, writer, sample data and the Segment Anything widget.

Only this package imports napari, Qt and magicgui; it turns layers and mouse
events into calls on the compute core (:mod:`napari_sam.predictor`,
:mod:`napari_sam.cache`, :mod:`napari_sam.propagation`, :mod:`napari_sam.io`)
and core results back into layers. It holds no segmentation logic.

Contributions are declared in ``napari_sam/napari.yaml`` (npe2).
"""
