# The original AuroraSOC implementation (reference/aurorasoc-redis-streams.txt),
# with the imports it needs; used to check compatibility both ways.
import json
import logging
from datetime import datetime
from typing import Callable
from uuid import uuid4

import redis

logger = logging.getLogger(__name__)


class RedisStreamPublisher:
    def __init__(self, redis_client):
        self.redis = redis_client

    async def publish(self, stream: str, data: dict):
        """Publish a message to a Redis Stream."""
        message = {
            "id": str(uuid4()),
            "timestamp": datetime.utcnow().isoformat(),
            "data": json.dumps(data)
        }

        # XADD with auto-generated stream ID
        msg_id = await self.redis.xadd(stream, message)

        # Trim stream to prevent unbounded growth
        await self.redis.xtrim(stream, maxlen=10000, approximate=True)

        return msg_id


class RedisStreamConsumer:
    def __init__(self, redis_client, stream: str, group: str, consumer: str):
        self.redis = redis_client
        self.stream = stream
        self.group = group
        self.consumer = consumer

    async def setup(self):
        """Create consumer group if it doesn't exist."""
        try:
            await self.redis.xgroup_create(
                self.stream, self.group, id="0", mkstream=True
            )
        except redis.ResponseError:
            pass  # Group already exists

    async def consume(self, handler: Callable, batch_size: int = 10):
        """Read and process messages from the stream."""
        while True:
            # Read new messages for this consumer
            messages = await self.redis.xreadgroup(
                groupname=self.group,
                consumername=self.consumer,
                streams={self.stream: ">"},
                count=batch_size,
                block=5000  # Block for 5s if no messages
            )

            for stream_name, entries in messages:
                for msg_id, data in entries:
                    try:
                        await handler(json.loads(data["data"]))
                        # Acknowledge successful processing
                        await self.redis.xack(self.stream, self.group, msg_id)
                    except Exception as e:
                        logger.error(f"Failed to process {msg_id}: {e}")
                        # Message remains in PEL for redelivery
