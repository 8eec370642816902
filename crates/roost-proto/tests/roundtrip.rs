//! The generated code works: prost messages survive encode/decode, and a generated client talks
//! to a generated server over a real HTTP/2 connection on `127.0.0.1:0`.

use std::net::SocketAddr;

use prost::Message as _;
use roost_proto::v1::cluster_client::ClusterClient;
use roost_proto::v1::cluster_server::{Cluster, ClusterServer};
use roost_proto::v1::{
    Addressed, ForwardAck, ForwardBatch, ForwardedMessage, JoinRequest, LeaveRequest, Member,
    MembershipReply, Message, ProposeReply, ProposeRequest, StatusReply, StatusRequest,
    TakeSessionReply, TakeSessionRequest, UserProperty,
};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status, Streaming};

fn sample_batch() -> ForwardBatch {
    ForwardBatch {
        origin_node: 3,
        messages: vec![
            ForwardedMessage {
                seq: 41,
                message: Some(Message {
                    topic: "sensors/kitchen/temp".to_owned(),
                    payload: b"21.5".to_vec(),
                    qos: 1,
                    retain: false,
                    payload_format_indicator: Some(1),
                    content_type: Some("text/plain".to_owned()),
                    response_topic: None,
                    correlation_data: Some(vec![0, 1, 2, 255]),
                    user_properties: vec![UserProperty {
                        key: "unit".to_owned(),
                        value: "celsius".to_owned(),
                    }],
                    expiry_ms: Some(60_000),
                    publisher: "thermo-1".to_owned(),
                    id: 0x1d_0000_0007,
                }),
                direct: true,
                shared_filters: vec!["$share/g/sensors/#".to_owned()],
                to: None,
                give_up_at_ms: 1_795_000_000_123,
            },
            ForwardedMessage {
                seq: 42,
                // Proto3 defaults everywhere: encodes to (almost) nothing and must still round-trip.
                message: Some(Message::default()),
                direct: false,
                shared_filters: Vec::new(),
                to: None,
                give_up_at_ms: 0,
            },
            ForwardedMessage {
                seq: 43,
                // Passed on to one session that moved (docs/rfcs/0006).
                message: Some(Message::default()),
                direct: false,
                shared_filters: Vec::new(),
                to: Some(Addressed {
                    client_id: "dev-1".to_owned(),
                    generation: 9,
                    qos: 2,
                    retain: true,
                    subscription_ids: vec![4],
                    shared_filter: None,
                }),
                give_up_at_ms: 7,
            },
        ],
        epoch: 0x5eed_0000_0001,
    }
}

#[test]
fn forward_batch_roundtrips_through_prost() -> anyhow::Result<()> {
    let batch = sample_batch();

    let bytes = batch.encode_to_vec();
    assert_eq!(bytes.len(), batch.encoded_len());

    let decoded = ForwardBatch::decode(bytes.as_slice())?;
    assert_eq!(decoded, batch);

    // Optional fields keep "absent" apart from "present and zero".
    let first = decoded.messages[0].message.as_ref();
    assert_eq!(first.and_then(|m| m.response_topic.clone()), None);
    assert_eq!(first.and_then(|m| m.expiry_ms), Some(60_000));
    Ok(())
}

/// A stopping node's question to the peer it handed sessions to, and the answer (indices into
/// the question), survive the wire.
#[test]
fn placed_question_and_answer_roundtrip_through_prost() -> anyhow::Result<()> {
    use roost_proto::v1::{PlacedReply, PlacedRequest, PlacedSession};
    let q = PlacedRequest {
        sessions: vec![
            PlacedSession {
                client_id: "dev-1".to_owned(),
                generation: 7,
            },
            PlacedSession {
                client_id: String::new(),
                generation: u64::MAX,
            },
        ],
    };
    assert_eq!(PlacedRequest::decode(q.encode_to_vec().as_slice())?, q);
    let a = PlacedReply {
        pending: vec![0, 1, u32::MAX],
    };
    assert_eq!(PlacedReply::decode(a.encode_to_vec().as_slice())?, a);
    Ok(())
}

/// Answers `Status` with a fixed reply; everything else is unimplemented.
struct StatusOnly;

#[tonic::async_trait]
impl Cluster for StatusOnly {
    async fn propose(
        &self,
        _request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        Err(Status::unimplemented("propose"))
    }

    type ForwardStream = tonic::codegen::BoxStream<ForwardAck>;

    async fn forward(
        &self,
        _request: Request<Streaming<ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        Err(Status::unimplemented("forward"))
    }

    async fn take_session(
        &self,
        _request: Request<TakeSessionRequest>,
    ) -> Result<Response<TakeSessionReply>, Status> {
        Err(Status::unimplemented("take_session"))
    }

    async fn placed(
        &self,
        _: Request<roost_proto::v1::PlacedRequest>,
    ) -> Result<Response<roost_proto::v1::PlacedReply>, Status> {
        Err(Status::unimplemented("placed"))
    }

    async fn join(
        &self,
        _request: Request<JoinRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        Err(Status::unimplemented("join"))
    }

    async fn leave(
        &self,
        _request: Request<LeaveRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        Err(Status::unimplemented("leave"))
    }

    async fn applied(
        &self,
        _: Request<roost_proto::v1::AppliedRequest>,
    ) -> Result<Response<roost_proto::v1::AppliedReply>, Status> {
        Err(Status::unimplemented("applied"))
    }

    async fn renew_lease(
        &self,
        _: Request<roost_proto::v1::LeaseRequest>,
    ) -> Result<Response<roost_proto::v1::LeaseReply>, Status> {
        Err(Status::unimplemented("renew_lease"))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        Ok(Response::new(StatusReply {
            node_id: 7,
            leader_id: Some(7),
            term: 2,
            last_log_index: 10,
            applied_index: 10,
            members: vec![Member {
                node_id: 7,
                cluster_addr: "127.0.0.1:7000".to_owned(),
                mqtt_addr: "127.0.0.1:1883".to_owned(),
                voter: true,
                matched_index: Some(10),
            }],
            routes: 3,
            sessions: 4,
            retained: 5,
            state: "leader".to_owned(),
            draining: false,
        }))
    }
}

#[tokio::test]
async fn cluster_status_over_tonic_transport() -> anyhow::Result<()> {
    let incoming = TcpIncoming::bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
    let addr = incoming.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ClusterServer::new(StatusOnly))
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            }),
    );

    let mut client = ClusterClient::connect(format!("http://{addr}")).await?;

    let reply = client.status(StatusRequest {}).await?.into_inner();
    assert_eq!(reply.node_id, 7);
    assert_eq!(reply.leader_id, Some(7));
    assert_eq!(reply.state, "leader");
    assert_eq!(reply.members.len(), 1);
    assert_eq!(reply.members[0].matched_index, Some(10));

    let err = client
        .take_session(TakeSessionRequest {
            client_id: "c1".to_owned(),
            generation: 1,
            requester: 2,
        })
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("take_session should be unimplemented"))?;
    assert_eq!(err.code(), Code::Unimplemented);

    drop(client);
    let _ = stop_tx.send(());
    server.await??;
    Ok(())
}
