"""coord's client library: trio-native, with kazoo's vocabulary.

::

    async with client.connect("127.0.0.1:2281,127.0.0.1:2282") as zk:
        await zk.create("/app/config", b"v1", makepath=True)
        watch = client.Watch()
        data, stat = await zk.get("/app/config", watch=watch)
        event = await watch.wait()          # WatchEvent(EventType.NODE_DATA_CHANGED, "/app/config")

        async with zk.transaction() as t:   # all or nothing
            t.set_data("/app/config", b"v2", version=stat.version)
            t.create("/app/history-", b"v2", sequence=True)

        async with zk.add_watch("/app", recursive=True) as events:
            async for event in events: ...

        async for state in zk.states():     # CONNECTED, SUSPENDED, ..., LOST
            ...

:func:`connect` opens a session and yields a :class:`Client`; its methods are
kazoo's, made async. Errors are the classes of :mod:`coord.errors` (one hierarchy
under :class:`CoordError`), re-exported here; :class:`Retry` retries the ones that
may pass. Everything is cancellable; no threads, no callbacks.
"""

from client._client import Client as Client
from client._client import connect as connect
from client._connection import DEFAULT_PORT as DEFAULT_PORT
from client._errors import ConnectionClosedError as ConnectionClosedError
from client._retry import RETRYABLE as RETRYABLE
from client._retry import Retry as Retry
from client._state import ConnectionState as ConnectionState
from client._state import StateStream as StateStream
from client._tls import client_context as client_context
from client._transaction import Transaction as Transaction
from client._watch import Watch as Watch
from client._watch import WatchEvent as WatchEvent
from client._watch import WatchStream as WatchStream
from coord.errors import ApiError as ApiError
from coord.errors import AuthFailedError as AuthFailedError
from coord.errors import BadArgumentsError as BadArgumentsError
from coord.errors import BadVersionError as BadVersionError
from coord.errors import ConnectionLossError as ConnectionLossError
from coord.errors import CoordError as CoordError
from coord.errors import CoordSystemError as CoordSystemError
from coord.errors import DataInconsistencyError as DataInconsistencyError
from coord.errors import InvalidACLError as InvalidACLError
from coord.errors import InvalidCallbackError as InvalidCallbackError
from coord.errors import MarshallingError as MarshallingError
from coord.errors import NoAuthError as NoAuthError
from coord.errors import NoChildrenForEphemeralsError as NoChildrenForEphemeralsError
from coord.errors import NodeExistsError as NodeExistsError
from coord.errors import NoNodeError as NoNodeError
from coord.errors import NotEmptyError as NotEmptyError
from coord.errors import NotLeaderError as NotLeaderError
from coord.errors import NotReadOnlyError as NotReadOnlyError
from coord.errors import NoWatcherError as NoWatcherError
from coord.errors import OperationTimeoutError as OperationTimeoutError
from coord.errors import QuotaExceededError as QuotaExceededError
from coord.errors import RequestTimeoutError as RequestTimeoutError
from coord.errors import RolledBackError as RolledBackError
from coord.errors import RuntimeInconsistencyError as RuntimeInconsistencyError
from coord.errors import ServerBehindError as ServerBehindError
from coord.errors import SessionExpiredError as SessionExpiredError
from coord.errors import SessionMovedError as SessionMovedError
from coord.errors import StorageError as StorageError
from coord.errors import StorageFullError as StorageFullError
from coord.errors import ThrottledOpError as ThrottledOpError
from coord.errors import UnimplementedError as UnimplementedError
from coord.errors import UnknownSessionError as UnknownSessionError
from coord.protocol import DATA_BYTES_MAX_DEFAULT as DATA_BYTES_MAX_DEFAULT
from coord.protocol import EventType as EventType
from coord.protocol import Stat as ZnodeStat
from coord.protocol import WatcherType as WatcherType

__all__ = [
    "client_context",
    "Client",
    "connect",
    "DEFAULT_PORT",
    "ConnectionClosedError",
    "RETRYABLE",
    "Retry",
    "ConnectionState",
    "StateStream",
    "Transaction",
    "Watch",
    "WatchEvent",
    "WatchStream",
    "DATA_BYTES_MAX_DEFAULT",
    "EventType",
    "ZnodeStat",
    "WatcherType",
    "ApiError",
    "AuthFailedError",
    "BadArgumentsError",
    "BadVersionError",
    "ConnectionLossError",
    "CoordError",
    "CoordSystemError",
    "DataInconsistencyError",
    "InvalidACLError",
    "InvalidCallbackError",
    "MarshallingError",
    "NoAuthError",
    "NoChildrenForEphemeralsError",
    "NoNodeError",
    "NoWatcherError",
    "NodeExistsError",
    "NotEmptyError",
    "NotLeaderError",
    "NotReadOnlyError",
    "OperationTimeoutError",
    "QuotaExceededError",
    "RequestTimeoutError",
    "RolledBackError",
    "RuntimeInconsistencyError",
    "ServerBehindError",
    "SessionExpiredError",
    "SessionMovedError",
    "StorageError",
    "StorageFullError",
    "ThrottledOpError",
    "UnimplementedError",
    "UnknownSessionError",
]
