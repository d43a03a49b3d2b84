"""The sync conversation's state machine, written once for both roles.

Theory of operation
-------------------
Both peers track the same conversation: a data plane says hello, the control plane
welcomes it, and from then on the conversation is open until either side goes away. The
table below says, for every (sender, message type), in which conversation state the message
is allowed and which state follows. A core consults it with ``sender = our role`` before
sending (a violation is a *local* ProtocolError: a bug in the shell) and with ``sender =
their role`` after decoding (a *remote* ProtocolError: a misbehaving peer). Any
ProtocolError moves the conversation to ERROR, where nothing more may be sent or received;
the shell then closes the websocket (``close_code_for``).

Rules that depend on more than the state (one snapshot in flight, acks that match what was
sent) live in the connection classes, next to the data they need.

    sender  message    AWAIT_HELLO     AWAIT_WELCOME   OPEN
    ------  ---------  --------------  --------------  ----
    DP      hello      -> AWAIT_WELCOME
    CP      welcome                    -> OPEN
    CP      status                                     OPEN
    CP      snapshot                                   OPEN
    CP      heartbeat                                  OPEN
    DP      heartbeat                                  OPEN
    DP      ack                                        OPEN
    DP      nack                                       OPEN
"""

from __future__ import annotations

import enum
from typing import Final

from protocol._errors import ProtocolError

__all__ = ["TRANSITIONS", "ConversationState", "Role"]


class Role(enum.Enum):
    CONTROL_PLANE = "control_plane"
    DATA_PLANE = "data_plane"


class ConversationState(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_WELCOME = "await_welcome"
    OPEN = "open"
    ERROR = "error"


_CP, _DP = Role.CONTROL_PLANE, Role.DATA_PLANE
_HELLO, _WELCOME, _OPEN = (
    ConversationState.AWAIT_HELLO,
    ConversationState.AWAIT_WELCOME,
    ConversationState.OPEN,
)

#: (sender, message type) -> {state in which it is allowed: next state}
TRANSITIONS: Final[dict[tuple[Role, str], dict[ConversationState, ConversationState]]] = {
    (_DP, "hello"): {_HELLO: _WELCOME},
    (_CP, "welcome"): {_WELCOME: _OPEN},
    (_CP, "status"): {_OPEN: _OPEN},
    (_CP, "snapshot"): {_OPEN: _OPEN},
    (_CP, "heartbeat"): {_OPEN: _OPEN},
    (_DP, "heartbeat"): {_OPEN: _OPEN},
    (_DP, "ack"): {_OPEN: _OPEN},
    (_DP, "nack"): {_OPEN: _OPEN},
}


class Conversation:
    """The shared state, advanced by both the sending and the receiving path of a core."""

    def __init__(self, our_role: Role) -> None:
        self.our_role = our_role
        self.state = ConversationState.AWAIT_HELLO

    def check(self, sender: Role, message_type: str) -> ConversationState:
        """The state that follows *message_type* from *sender*, or raise ProtocolError."""
        local = sender is self.our_role
        if self.state is ConversationState.ERROR:
            raise ProtocolError(
                "the conversation already failed", local=local, code="connection_failed"
            )
        allowed = TRANSITIONS.get((sender, message_type), {})
        if self.state not in allowed:
            raise ProtocolError(
                f"{sender.value} may not send {message_type!r} in state {self.state.value}",
                local=local,
                code="unexpected_message",
            )
        return allowed[self.state]
