"""Pretrained classifiers used as teachers (frozen; gradients flow to inputs only).

The CIFAR-10 ResNet checkpoints are BSD-2-Clause (Yerlan Idelbayev); the notice is in
``LICENSE-teachers.txt`` beside this file.
"""

from dfnas.teachers.hub import CIFAR10_CLASSES, TEACHERS, resolve_checkpoint
from dfnas.teachers.loader import TeacherConfig, load_teacher
from dfnas.teachers.resnet_cifar import CifarResNet
from dfnas.teachers.teacher import Teacher, TeacherSpec

__all__ = ["CIFAR10_CLASSES", "TEACHERS", "CifarResNet", "Teacher", "TeacherConfig", "TeacherSpec",
           "load_teacher", "resolve_checkpoint"]
