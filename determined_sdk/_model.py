"""The model registry: :class:`Model` and :class:`ModelVersion`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from determined_sdk import errors
from determined_sdk._checkpoint import Checkpoint
from determined_sdk._enums import OrderBy
from determined_sdk._resource import Resource, SessionLike, dumps, loads, str_list
from determined_sdk._session import Session
from determined_sdk.proto import model_pb2, workspace_pb2


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise errors.InvalidArgumentError(f"{what}: must be a non-empty string, got {value!r}")
    return value


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise errors.InvalidArgumentError(f"{what}: must be a dict, got {type(value).__name__}")
    return value


class ModelVersion(Resource[model_pb2.ModelVersion]):
    """One registered version of a model: a checkpoint with a version number.

    ``ModelVersion(model_name, version, session)`` builds a blank object without a request.
    Cached attributes (refreshed by :meth:`reload`): ``id``, ``model_id``, ``name``,
    ``comment``, ``metadata``, ``labels``, ``checkpoint``, ``creation_time``.

    Args:
        model_name: Its model's name.
        version: Version number (1, 2, ...).
        session: A :class:`Session` or a ``Determined`` client (None: the default client).
    """

    def __init__(self, model_name: str, version: int, session: SessionLike | None = None) -> None:
        super().__init__(session)
        self.model_name = _name(model_name, "model_name")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise errors.InvalidArgumentError(
                f"version: must be a positive integer, got {version!r}"
            )
        self.version = version

    @classmethod
    def _from_proto(
        cls, msg: model_pb2.ModelVersion, model_name: str, session: Session
    ) -> ModelVersion:
        v = cls(model_name, msg.version, session)
        v._set(msg)
        return v

    def _fetch(self) -> model_pb2.ModelVersion:
        req = model_pb2.GetModelVersionRequest(model_name=self.model_name, version=self.version)
        return self._session.get_model_version(req).model_version

    @property
    def id(self) -> int:
        """Registry-wide id (cached)."""
        return self._m().id

    @property
    def model_id(self) -> int:
        """Its model's id (cached)."""
        return self._m().model_id

    @property
    def name(self) -> str:
        """Version name (cached)."""
        return self._m().name

    @property
    def comment(self) -> str:
        """Comment (cached)."""
        return self._m().comment

    @property
    def model_version(self) -> int:
        """The version number (Determined's name for :attr:`version`)."""
        return self.version

    @property
    def notes(self) -> str:
        """Free-text notes (cached; :meth:`set_notes` updates them)."""
        return self._m().notes

    def _patch(self, req: model_pb2.PatchModelVersionRequest) -> None:
        req.model_name, req.version = self.model_name, self.version
        self._set(self._session.patch_model_version(req).model_version)

    def set_name(self, name: str) -> None:
        """Rename this version (updates the cache).

        Raises:
            InvalidArgumentError: Not a string.
            NotFoundError: No such model or version.
        """
        if not isinstance(name, str):
            raise errors.InvalidArgumentError(f"name: must be a string, got {name!r}")
        self._patch(model_pb2.PatchModelVersionRequest(name=name))

    def set_notes(self, notes: str) -> None:
        """Replace the notes (updates the cache).

        Raises:
            InvalidArgumentError: Not a string.
            NotFoundError: No such model or version.
        """
        if not isinstance(notes, str):
            raise errors.InvalidArgumentError(f"notes: must be a string, got {notes!r}")
        self._patch(model_pb2.PatchModelVersionRequest(notes=notes))

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata (cached)."""
        metadata: dict[str, Any] = self._json("metadata_json")
        return metadata

    @property
    def labels(self) -> list[str]:
        """Labels (cached)."""
        return list(self._m().labels)

    @property
    def checkpoint(self) -> Checkpoint:
        """The registered checkpoint, hydrated from the version's message (cached)."""
        return Checkpoint._from_proto(self._m().checkpoint, self._session)

    @property
    def creation_time(self) -> float:
        """Unix time it was registered (cached)."""
        return self._m().creation_time

    def delete(self) -> None:
        """Delete this version (the checkpoint stays).

        Raises:
            NotFoundError: No such model or version.
        """
        req = model_pb2.DeleteModelVersionRequest(model_name=self.model_name, version=self.version)
        self._session.delete_model_version(req)

    def __repr__(self) -> str:
        return f"ModelVersion(model_name={self.model_name!r}, version={self.version})"


class Model(Resource[model_pb2.Model]):
    """A registered model: a name, metadata, and numbered versions pointing at checkpoints.

    ``Model(name, session)`` builds a blank object without a request. Cached attributes
    (refreshed by :meth:`reload`): ``id``, ``description``, ``metadata``, ``labels``,
    ``archived``, ``creation_time``, ``last_updated_time``, ``num_versions``,
    ``workspace_id``. Setters update the master and the attribute they set.

    Args:
        name: The model's name.
        session: A :class:`Session` or a ``Determined`` client (None: the default client).
    """

    def __init__(self, name: str, session: SessionLike | None = None) -> None:
        super().__init__(session)
        self.name = _name(name, "name")

    @classmethod
    def _from_proto(cls, msg: model_pb2.Model, session: Session) -> Model:
        m = cls(msg.name, session)
        m._set(msg)
        return m

    def _fetch(self) -> model_pb2.Model:
        return self._session.get_model(model_pb2.GetModelRequest(name=self.name)).model

    @property
    def id(self) -> int:
        """Id (cached)."""
        return self._m().id

    @property
    def username(self) -> str:
        """The owner: who created it ("" if made before users existed) (cached)."""
        return self._m().username

    @property
    def description(self) -> str:
        """Description (cached; :meth:`set_description` updates it)."""
        return self._m().description

    @property
    def metadata(self) -> dict[str, Any]:
        """User metadata (cached; the metadata setters update it)."""
        metadata: dict[str, Any] = self._json("metadata_json")
        return metadata

    @property
    def labels(self) -> list[str]:
        """Labels (cached; :meth:`add_label`/:meth:`remove_label` update them)."""
        return list(self._m().labels)

    @property
    def archived(self) -> bool:
        """Whether it is archived (cached; :meth:`archive`/:meth:`unarchive` update it)."""
        return self._m().archived

    @property
    def creation_time(self) -> float:
        """Unix time it was created (cached)."""
        return self._m().creation_time

    @property
    def last_updated_time(self) -> float:
        """Unix time it last changed (cached)."""
        return self._m().last_updated_time

    @property
    def num_versions(self) -> int:
        """How many versions it has (cached)."""
        return self._m().num_versions

    @property
    def workspace_id(self) -> int:
        """Its workspace's id (cached)."""
        return self._m().workspace_id

    # -- setters ----------------------------------------------------------------------------
    def _patch(self, req: model_pb2.PatchModelRequest, fields: Iterable[str]) -> None:
        req.name = self.name
        fresh = self._session.patch_model(req).model
        msg = self._msg
        if msg is None:
            return
        for f in fields:
            if f == "labels":
                del msg.labels[:]
                msg.labels.extend(fresh.labels)
            else:
                setattr(msg, f, getattr(fresh, f))
            self._parsed.pop(f, None)
        msg.last_updated_time = fresh.last_updated_time

    def set_description(self, description: str) -> None:
        """Set the description (updates ``description``).

        Raises:
            NotFoundError: The model does not exist.
        """
        if not isinstance(description, str):
            raise errors.InvalidArgumentError(f"description: must be a string, got {description!r}")
        self._patch(model_pb2.PatchModelRequest(description=description), ["description"])

    def set_metadata(self, metadata: dict[str, Any]) -> None:
        """Replace the whole metadata dict (updates ``metadata``).

        Raises:
            InvalidArgumentError: ``metadata`` is not a dict of JSON values.
            NotFoundError: The model does not exist.
        """
        text = dumps(_dict(metadata, "metadata"), "metadata")
        self._patch(model_pb2.PatchModelRequest(metadata_json=text), ["metadata_json"])

    def add_metadata(self, metadata: dict[str, Any]) -> None:
        """Merge keys into the metadata (read-modify-write from a fresh copy).

        Raises:
            InvalidArgumentError: ``metadata`` is not a dict of JSON values.
            NotFoundError: The model does not exist.
        """
        merged = dict(loads(self._fetch().metadata_json))
        merged.update(_dict(metadata, "metadata"))
        self.set_metadata(merged)

    def remove_metadata(self, keys: Iterable[str] | str) -> None:
        """Remove top-level keys from the metadata (missing keys are ignored).

        Raises:
            NotFoundError: The model does not exist.
        """
        drop = set(str_list(keys, "keys"))
        current = loads(self._fetch().metadata_json)
        self.set_metadata({k: v for k, v in current.items() if k not in drop})

    def _set_labels(self, labels: list[str]) -> None:
        req = model_pb2.PatchModelRequest(set_labels=True, labels=labels)
        self._patch(req, ["labels"])

    def add_label(self, label: str) -> None:
        """Add a label (no-op if present; updates ``labels``).

        Raises:
            NotFoundError: The model does not exist.
        """
        label = _name(label, "label")
        current = list(self._fetch().labels)
        if label not in current:
            self._set_labels([*current, label])

    def remove_label(self, label: str) -> None:
        """Remove a label (no-op if absent; updates ``labels``).

        Raises:
            NotFoundError: The model does not exist.
        """
        label = _name(label, "label")
        current = list(self._fetch().labels)
        if label in current:
            self._set_labels([x for x in current if x != label])

    def archive(self) -> None:
        """Archive the model (updates ``archived``).

        Raises:
            NotFoundError: The model does not exist.
        """
        self._patch(model_pb2.PatchModelRequest(archived=True), ["archived"])

    def unarchive(self) -> None:
        """Undo :meth:`archive` (updates ``archived``).

        Raises:
            NotFoundError: The model does not exist.
        """
        self._patch(model_pb2.PatchModelRequest(archived=False), ["archived"])

    def delete(self) -> None:
        """Delete the model and its versions (checkpoints stay).

        Raises:
            NotFoundError: The model does not exist.
        """
        self._session.delete_model(model_pb2.DeleteModelRequest(name=self.name))

    # -- versions ---------------------------------------------------------------------------
    def register_version(
        self,
        checkpoint_uuid: str,
        *,
        name: str = "",
        comment: str = "",
        metadata: dict[str, Any] | None = None,
        labels: Iterable[str] | None = None,
    ) -> ModelVersion:
        """Register a checkpoint as this model's next version.

        Args:
            checkpoint_uuid: The checkpoint to register.
            name: Version name.
            comment: Free text.
            metadata: Version metadata.
            labels: Version labels.

        Returns:
            The new version (numbered 1, 2, ... per model).

        Raises:
            NotFoundError: No such model or checkpoint.
        """
        req = model_pb2.RegisterModelVersionRequest(
            model_name=self.name,
            checkpoint_uuid=_name(checkpoint_uuid, "checkpoint_uuid"),
            name=name,
            comment=comment,
            metadata_json=dumps(_dict(metadata or {}, "metadata"), "metadata"),
            labels=str_list(labels, "labels"),
        )
        msg = self._session.register_model_version(req).model_version
        return ModelVersion._from_proto(msg, self.name, self._session)

    def list_versions(self) -> list[ModelVersion]:
        """All its versions, oldest first.

        Returns:
            A list of hydrated :class:`ModelVersion` objects.

        Raises:
            NotFoundError: The model does not exist.
        """
        req = model_pb2.ListModelVersionsRequest(model_name=self.name)
        resp = self._session.list_model_versions(req)
        return [ModelVersion._from_proto(v, self.name, self._session) for v in resp.model_versions]

    @property
    def model_id(self) -> int:
        """Determined's name for :attr:`id` (cached)."""
        return self.id

    def set_labels(self, labels: Iterable[str]) -> None:
        """Make the labels exactly ``labels`` (updates ``labels``).

        Raises:
            InvalidArgumentError: A label is not a string.
            NotFoundError: The model does not exist.
        """
        self._set_labels(str_list(labels, "labels"))

    def move_to_workspace(self, workspace_name: str) -> None:
        """Move the model to another workspace (updates ``workspace_id``).

        Raises:
            NotFoundError: No such model or workspace.
        """
        if not isinstance(workspace_name, str) or not workspace_name:
            raise errors.InvalidArgumentError(
                f"workspace_name: must be a non-empty string, got {workspace_name!r}"
            )
        ws = self._session.get_workspace(
            workspace_pb2.GetWorkspaceRequest(name=workspace_name)
        ).workspace
        self._patch(model_pb2.PatchModelRequest(workspace_id=ws.id), ["workspace_id"])

    def get_versions(self, order_by: OrderBy = OrderBy.DESC) -> list[ModelVersion]:
        """Its versions, newest first by default (Determined's; see :meth:`list_versions`).

        Raises:
            InvalidArgumentError: ``order_by`` is not an OrderBy.
            NotFoundError: The model does not exist.
        """
        if not isinstance(order_by, OrderBy):
            raise errors.InvalidArgumentError(f"order_by: must be an OrderBy, got {order_by!r}")
        versions = self.list_versions()
        return versions[::-1] if order_by.value == "DESC" else versions

    def get_version(self, version: int | None = None) -> ModelVersion | None:
        """One version, or the latest; None when asking for the latest of a model that has
        no versions (as in Determined).

        Args:
            version: Version number (None: the latest).

        Returns:
            The version (hydrated), or None.

        Raises:
            NotFoundError: No such model, or no such numbered version.
            InvalidArgumentError: ``version`` is not a positive integer.
        """
        if version is None:
            self.reload()
            if self.num_versions == 0:
                return None
        if version is not None and (
            isinstance(version, bool) or not isinstance(version, int) or version < 1
        ):
            raise errors.InvalidArgumentError(
                f"version: must be a positive integer, got {version!r}"
            )
        req = model_pb2.GetModelVersionRequest(model_name=self.name, version=version or 0)
        msg = self._session.get_model_version(req).model_version
        return ModelVersion._from_proto(msg, self.name, self._session)

    def __repr__(self) -> str:
        return f"Model(name={self.name!r})"
