import json
from testredis import redis
from streambus.compat.aurorasoc import RedisStreamConsumer


async def stream_to_websocket():
    """Relay Redis Stream events to WebSocket clients."""
    consumer = RedisStreamConsumer(
        redis, stream="aurora:alerts",
        group="websocket-relay", consumer="ws-1"
    )

    async for message in consumer:
        # Broadcast to all connected WebSocket clients
        await connection_manager.broadcast(json.dumps(message))
