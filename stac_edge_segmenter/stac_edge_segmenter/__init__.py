"""Edge side of STAC: decoding, semantic segmentation and the default segmentation model."""
