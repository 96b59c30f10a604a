"""A stock gRPC client (Python grpcio) that knows nothing of kvmesh's .proto
files: it discovers the API through server reflection, calls
kvmesh.v1.Cluster/Status with dynamically built messages, and checks the
standard health service. Prints one line per finding; exits non-zero on any
failure. It speaks TLS as any stock client would: it verifies the node
against the cluster CA (the name every node certificate carries is
kvmesh-node) and sends an API token; for the node-only calls it presents a
node's certificate. Usage: grpc_probe.py HOST:PORT CA_FILE TOKEN NODE_CERT NODE_KEY
"""
import grpc, sys
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf import message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
target, ca_file, token, node_cert, node_key = sys.argv[1:6]
ca = open(ca_file, "rb").read()
options = [("grpc.ssl_target_name_override", "kvmesh-node")]


class Bearer(grpc.AuthMetadataPlugin):
    def __call__(self, context, callback):
        callback((("authorization", "Bearer " + token),), None)


user = grpc.composite_channel_credentials(grpc.ssl_channel_credentials(root_certificates=ca), grpc.metadata_call_credentials(Bearer()))
ch = grpc.secure_channel(target, user, options)
node = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=ca, private_key=open(node_key, "rb").read(), certificate_chain=open(node_cert, "rb").read()), options)
db = ProtoReflectionDescriptorDatabase(ch)
print("services:", sorted(db.get_services()))
pool = DescriptorPool(db)
svc = pool.FindServiceByName("kvmesh.v1.Cluster")
m = svc.FindMethodByName("Status")
Req = message_factory.GetMessageClass(m.input_type); Resp = message_factory.GetMessageClass(m.output_type)
call = ch.unary_unary("/kvmesh.v1.Cluster/Status", request_serializer=Req.SerializeToString, response_deserializer=Resp.FromString)
r = call(Req())
print("status via reflection: leader", r.leader.name, "term", r.term, "members", len(r.members))
h = health_pb2_grpc.HealthStub(ch)
for s in ["", "kvmesh.v1.Cluster"]:
    status = h.Check(health_pb2.HealthCheckRequest(service=s)).status
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    print("health", repr(s), name)
    if name != "SERVING":
        sys.exit(1)

# Without TLS the node does not answer at all.
try:
    grpc.channel_ready_future(grpc.insecure_channel(target)).result(timeout=1)
    health_pb2_grpc.HealthStub(grpc.insecure_channel(target)).Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
    print("plaintext was answered")
    sys.exit(1)
except Exception as e:
    print("plaintext refused:", type(e).__name__)

join = svc.FindMethodByName("Join")
JoinReq = message_factory.GetMessageClass(join.input_type)
JoinResp = message_factory.GetMessageClass(join.output_type)
# An API token, however powerful, does not open the internal services.
try:
    ch.unary_unary("/kvmesh.v1.Cluster/Join", request_serializer=JoinReq.SerializeToString, response_deserializer=JoinResp.FromString)(JoinReq(name="x"))
    print("join with an API token was accepted")
    sys.exit(1)
except grpc.RpcError as e:
    print("join with an API token:", e.code().name, e.details())
# A node of another protocol version is refused, with a message saying why.
call = node.unary_unary("/kvmesh.v1.Cluster/Join", request_serializer=JoinReq.SerializeToString, response_deserializer=JoinResp.FromString)
try:
    call(JoinReq(node_id=42, name="probe", address="127.0.0.1:1", cpus=1, memory_mib=1, protocol_version=999))
    print("join of protocol 999 was accepted")
    sys.exit(1)
except grpc.RpcError as e:
    print("join of protocol 999:", e.code().name, e.details())
raft = pool.FindServiceByName("kvmesh.v1.Raft").FindMethodByName("Vote")
RaftMsg = message_factory.GetMessageClass(raft.input_type)
call = node.unary_unary("/kvmesh.v1.Raft/Vote", request_serializer=RaftMsg.SerializeToString, response_deserializer=RaftMsg.FromString)
try:
    call(RaftMsg(payload=b""), metadata=[("kvmesh-protocol", "999")])
    print("raft rpc of protocol 999 was accepted")
    sys.exit(1)
except grpc.RpcError as e:
    print("raft rpc of protocol 999:", e.code().name, e.details())
