"""moto's server, with SQS fair queues: run with the pinned moto virtualenv's Python (./dev starts
moto this way), with moto_server's arguments.

A standard queue whose messages carry a MessageGroupId is an SQS fair queue: when a tenant (a group)
builds a backlog, SQS delivers the other tenants' messages first (of several noisy tenants, the one
with the fewest messages in flight first). moto 5.2.5 stores the group id and delivers in arrival
order. Here a standard queue's visible messages are offered in order of how many messages their
group has in flight, fewest first, arrival order within a group (a message without a group is a
tenant of its own). That is stronger than SQS, which deprioritises a tenant only once its share
of the in-flight messages or of the consumers' time passes its thresholds; a queue without group
ids (a deployment serving one tenant) is delivered exactly as before.
"""

import sys
from collections import Counter

from moto.server import main
from moto.sqs.models import Queue

_visible = Queue.messages.fget


def fair_messages(self):
    messages = _visible(self)
    if self.fifo_queue or not any(m.group_id for m in messages):
        return messages
    in_flight = Counter(
        m.group_id for m in self._pending_messages if m.group_id and not m.visible
    )
    return sorted(messages, key=lambda m: in_flight[m.group_id] if m.group_id else 0)


Queue.messages = property(fair_messages)

if __name__ == "__main__":
    sys.exit(main())
