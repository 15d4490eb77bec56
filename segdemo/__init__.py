"""segdemo: SegFormer semantic segmentation through one fused graph, served by Gradio."""

__version__ = "0.1.0"
