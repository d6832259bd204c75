"""Each driver's `[[devices]]` table as one pydantic model: the common keys, its transports' and its Options'.

`config check` validates a device with the model of its `driver` (a union on `driver` over the
registry) and `config schema` prints the same models' JSON Schema, so the two cannot disagree.
A model is built on first use, for the drivers a config names only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from edge_common.device import DeviceConfig, error_key

if TYPE_CHECKING:
    from pydantic import ModelWrapValidatorHandler

SERIAL_KEYS = ("port", "baud", "parity", "stopbits", "bytesize")
BLE_KEYS = ("address",)
REPLAY_KEY = "replay"
TRANSPORT_KEYS = (*SERIAL_KEYS, *BLE_KEYS, REPLAY_KEY)


class DriverClass(Protocol):
    """What a device model needs of its `drivers.base.Driver` subclass."""

    name: str
    Options: type[BaseModel]
    supports_replay: bool

    def transports(self) -> tuple[str, ...]: ...

    def transport_problems(self, device: DeviceConfig) -> list[tuple[str, str]]: ...

    def check_device(self, device: DeviceConfig) -> list[tuple[str, str]]: ...


class DeviceModel(DeviceConfig):
    """Base of the per-driver models: no key beyond the driver's, the transport rules of its class."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    driver_class: ClassVar[DriverClass]
    keys: ClassVar[tuple[str, ...]] = ()  # the keys the table takes (for "did you mean")

    @model_validator(mode="wrap")
    @classmethod
    def _rules(cls, data: Any, handler: ModelWrapValidatorHandler[DeviceModel]) -> DeviceModel:
        errors: list[InitErrorDetails] = []
        if isinstance(data, dict):  # keys of the wrong transport, a missing port or address (named by key)
            # (keys like `_fields_set` are model_construct's own: the handler names them unknown)
            lenient = DeviceConfig.model_construct(**{k: v for k, v in data.items() if not str(k).startswith("_")})
            for key, msg in cls.driver_class.transport_problems(lenient):
                errors.append(line_error("device_key", msg, (key,) if key else (), data.get(key)))
        try:
            out = handler(data)
        except ValidationError as e:
            for err in e.errors():
                msg = err["msg"].removeprefix("Value error, ")
                if err["type"] == "extra_forbidden":
                    msg = "unknown key" + _did_you_mean(str(err["loc"][-1]), cls.keys)
                errors.append(line_error(err["type"], msg, err["loc"], err.get("input")))
            out = None
        if errors or out is None:
            raise ValidationError.from_exception_data(cls.__name__, errors)
        return out


def _did_you_mean(key: str, keys: tuple[str, ...]) -> str:
    import difflib  # only for a config with a mistake (the running agent never needs it)

    close = difflib.get_close_matches(key, keys, n=1, cutoff=0.8)
    return f" (did you mean `{close[0]}`?)" if close else ""


def line_error(kind: str, msg: str, loc: tuple[int | str, ...], value: Any) -> InitErrorDetails:
    """One error of a ValidationError made of final messages (braces in them are not format fields)."""
    return InitErrorDetails(type=PydanticCustomError(kind, msg.replace("{", "{{").replace("}", "}}")),
                            loc=loc, input=value)


def device_model(cls: DriverClass, cache: dict[Any, Any] | None = None) -> type[DeviceModel]:
    """The model of a `[[devices]]` table of driver `cls` (kept in `cache` if given).

    Not kept for the process: a model holds ~0.2 MB of validators the running agent never needs
    again once its config validated (start-up garbage goes back to the OS, agent/memory.py).
    """
    cached = cache.get(cls) if cache is not None else None
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    transports = cls.transports()
    used = set(SERIAL_KEYS) if "serial" in transports else set()
    if "ble" in transports or "none" in transports:  # `none` (sim): a simulated BLE tag's address
        used |= set(BLE_KEYS)
    if cls.supports_replay and "serial" in transports:
        used.add(REPLAY_KEY)
    # Another transport's keys stay attributes (with their defaults) but are neither shown nor accepted.
    skip: Any = SkipJsonSchema[Any]  # type: ignore[misc]
    hidden: dict[str, Any] = {k: (skip, Field(default=DeviceConfig.model_fields[k].default))
                              for k in TRANSPORT_KEYS if k not in used}
    taken = set(cls.Options.model_fields) & set(DeviceConfig.model_fields)
    if taken:
        raise TypeError(f"driver {cls.name!r}: its Options redefine device keys: {', '.join(sorted(taken))}")
    bases: tuple[type[Any], ...] = (cls.Options, DeviceModel)
    model: type[DeviceModel] = create_model(f"Device_{cls.name}", __base__=bases, __module__=cls.__module__, **hidden)
    model.driver_class = cls
    model.keys = tuple(k for k in model.model_fields if k not in hidden)
    if cache is not None:
        cache[cls] = model
    return model


def _key(loc: tuple[int | str, ...]) -> str:
    key = error_key(loc)
    return "" if key == error_key(()) else key


def problems(cls: DriverClass, data: dict[str, Any]) -> list[tuple[str, str]]:
    """What is wrong with a device table of driver `cls`, as (key relative to the device, message)."""
    try:
        device_model(cls).model_validate(data)
    except ValidationError as e:
        return [(_key(err["loc"]), err["msg"]) for err in e.errors()]
    return cls.check_device(DeviceConfig.model_validate(data))
