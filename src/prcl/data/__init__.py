"""Data: datasets on disk, split files, loader-side transforms, the embedded demo dataset."""

from prcl.data.datasets import (
    CITYSCAPES_CLASS_NAMES,
    IGNORE_INDEX,
    VOC_CLASS_NAMES,
    CityscapesDataset,
    DataFileError,
    FolderDataset,
    SegmentationDataset,
    VOCDataset,
    read_image,
    to_rgb8,
)
from prcl.data.classes import CITYSCAPES_CLASS_COLORS, ClassInfo, read_classes_file, run_classes, voc_color_map
from prcl.data.demo_dataset import demo_class_colors, demo_class_names, generate_demo_dataset
from prcl.data.splits import (
    Splits,
    check_splits,
    make_splits,
    read_id_list,
    read_splits,
    split_dir,
    write_id_list,
    write_splits,
)
from prcl.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    eval_transform,
    train_transform,
    unlabeled_transform,
)

__all__ = [
    "CITYSCAPES_CLASS_COLORS",
    "CITYSCAPES_CLASS_NAMES",
    "IGNORE_INDEX",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VOC_CLASS_NAMES",
    "CityscapesDataset",
    "ClassInfo",
    "DataFileError",
    "FolderDataset",
    "SegmentationDataset",
    "Splits",
    "VOCDataset",
    "check_splits",
    "demo_class_colors",
    "demo_class_names",
    "eval_transform",
    "generate_demo_dataset",
    "make_splits",
    "read_classes_file",
    "read_id_list",
    "read_image",
    "read_splits",
    "run_classes",
    "split_dir",
    "to_rgb8",
    "train_transform",
    "unlabeled_transform",
    "voc_color_map",
    "write_id_list",
    "write_splits",
]
