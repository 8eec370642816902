//! PUBLISHes to the client: the encoding decisions that depend on the session — v5 properties,
//! server-to-client topic aliases, and the client's Maximum Packet Size.
//!
//! ```text
//!   take_outbox ─▶ Outbound::Publish(o) ─▶ prepare_publish(o, now)
//!        v5: message properties + remaining expiry + subscription ids
//!        alias: known ─▶ topic "" + alias │ new ─▶ topic + alias, kept only if it still fits
//!        size > client's Maximum Packet Size ─▶ abandon (too_large, slot freed) ─▶ None
//!                                          else ─▶ Some(Publish) ─▶ encode
//! ```

use super::{InflightState, OutPublish, Session};
use crate::topic::TopicName;
use roost_codec::{encoded_len, Packet, PacketId, Properties, Protocol, Publish};
use std::time::Instant;

impl Session {
    /// The PUBLISH packet for one outbound delivery, or `None` if it cannot be sent to this
    /// client: larger than its Maximum Packet Size even with a topic alias, so it is dropped,
    /// counted as `too_large`, and its window slot freed ([MQTT-3.1.2-25]; what that releases
    /// is in the outbox afterwards).
    ///
    /// The alias changes the size, so it is chosen before the size check: a known alias
    /// replaces the topic, a new one adds 3 bytes and is only defined if the packet still fits
    /// ([MQTT-3.1.2-24]); otherwise the topic goes out in full.
    pub fn prepare_publish(&mut self, o: OutPublish, now: Instant) -> Option<Publish> {
        match self.prepare_publish_packet(o, now)? {
            Packet::Publish(p) => Some(p),
            _ => None,
        }
    }

    /// [`prepare_publish`](Self::prepare_publish), returning the PUBLISH already wrapped as
    /// the [`Packet`] the encoder takes: the driver's hot path encodes it where it was built
    /// instead of moving a large value out and back in for every delivery.
    pub fn prepare_publish_packet(&mut self, o: OutPublish, now: Instant) -> Option<Packet> {
        let protocol = self.protocol();
        let v5 = protocol == Protocol::V5;
        let max_size = self
            .client
            .and_then(|c| c.maximum_packet_size)
            .map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        let mut properties = Properties::default();
        if v5 {
            o.msg.properties.write_to(&mut properties);
            properties.message_expiry_interval = o.msg.remaining_expiry(now);
            properties.subscription_identifiers = o.subscription_ids;
        }
        let mut packet = Packet::Publish(Publish {
            dup: o.dup,
            qos: o.qos,
            retain: o.retain,
            topic: o.msg.topic.as_str().to_owned(),
            packet_id: o.packet_id,
            properties,
            payload: o.msg.payload.clone(),
        });
        if let (Some((alias, first)), Packet::Publish(p)) =
            (self.peek_outbound_alias(&o.msg.topic), &mut packet)
        {
            p.properties.topic_alias = Some(alias);
            if !first {
                p.topic.clear();
            }
            if first {
                if encoded_len(&packet, protocol) <= max_size {
                    self.outbound_alias(&o.msg.topic);
                } else if let Packet::Publish(p) = &mut packet {
                    p.properties.topic_alias = None;
                }
            }
        }
        if max_size != usize::MAX && encoded_len(&packet, protocol) > max_size {
            // [MQTT-3.1.2-25]: drop it for this client, and count it.
            self.abandon(o.packet_id, now);
            return None;
        }
        Some(packet)
    }

    /// A server-to-client alias for `topic`: `Some((alias, first_use))`; when `first_use` the
    /// topic must be sent along with the alias. Aliases are handed out to the first topics sent
    /// until the client's Topic Alias Maximum is reached, and kept for the connection.
    pub fn outbound_alias(&mut self, topic: &TopicName) -> Option<(u16, bool)> {
        let alias = self.peek_outbound_alias(topic);
        if let Some((a, true)) = alias {
            self.aliases
                .get_or_insert_with(Box::default)
                .outbound
                .insert(topic.clone(), a);
        }
        alias
    }

    /// What [`outbound_alias`](Self::outbound_alias) would return, without defining a new
    /// alias: the caller first checks that the PUBLISH still fits the client's Maximum Packet
    /// Size with the Topic Alias property added ([MQTT-3.1.2-24]).
    pub fn peek_outbound_alias(&self, topic: &TopicName) -> Option<(u16, bool)> {
        let max = self.client.map_or(0, |c| c.topic_alias_maximum);
        if max == 0 {
            return None;
        }
        let outbound = self.aliases.as_ref().map(|a| &a.outbound);
        if let Some(&a) = outbound.and_then(|o| o.get(topic)) {
            return Some((a, false));
        }
        let used = outbound.map_or(0, |o| o.len());
        if used >= usize::from(max) {
            return None;
        }
        let a = u16::try_from(used + 1).ok()?;
        Some((a, true))
    }

    /// Forgets a PUBLISH that cannot be sent to this client (too large for its Maximum Packet
    /// Size, [MQTT-3.1.2-25]), freeing its window slot.
    pub fn abandon(&mut self, id: Option<PacketId>, now: Instant) {
        self.drops.too_large += 1;
        if let Some(id) = id {
            if let Some(pos) = self.position(id, InflightState::Published) {
                self.inflight.remove(pos);
                self.pump(now);
            }
        }
    }
}
