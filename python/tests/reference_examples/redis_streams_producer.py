from testredis import Redis
from streambus.compat.redis_streams import Producer

redis_conn = Redis()
producer = Producer(redis_conn=redis_conn, stream=STREAM)

# publish a single message
msg_id = producer.add({"message": "stuff goes here"})
print(f"Published {msg_id}")

# optional: cap the stream length with approximate trimming
producer_with_trim = Producer(redis_conn=redis_conn, stream=STREAM, maxlen=10000)
producer_with_trim.add({"message": "older entries will be trimmed"})
