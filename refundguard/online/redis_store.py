"""placeholder"""
class RedisProfileStore:  # replaced below
    pass
