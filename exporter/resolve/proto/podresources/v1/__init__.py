"""Kubelet pod-resources API v1: ``api.proto`` and its generated ``api_pb2`` / ``api_pb2_grpc`` modules."""
