from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ImportImageRequest(_message.Message):
    __slots__ = ("path", "name")
    PATH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    path: str
    name: str
    def __init__(self, path: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class ImportImageResponse(_message.Message):
    __slots__ = ("image_ref", "repo_tags")
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    REPO_TAGS_FIELD_NUMBER: _ClassVar[int]
    image_ref: str
    repo_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image_ref: _Optional[str] = ..., repo_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class BuildLocalImageRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class BuildLocalImageResponse(_message.Message):
    __slots__ = ("image_ref", "repo_tags")
    IMAGE_REF_FIELD_NUMBER: _ClassVar[int]
    REPO_TAGS_FIELD_NUMBER: _ClassVar[int]
    image_ref: str
    repo_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, image_ref: _Optional[str] = ..., repo_tags: _Optional[_Iterable[str]] = ...) -> None: ...
