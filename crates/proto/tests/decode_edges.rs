//! Decoding edge cases: minimum lengths, empty bodies, ACK tolerance, AUTH_TOKEN overruns, hostile frame
//! lengths, byte-at-a-time delivery, long streams and the client whitelist
//! (docs/protocol.md §3.3, §4, §5, §6.13).
#![allow(clippy::unwrap_used)] // a test fails by panicking

use bytes::{BufMut, Bytes, BytesMut};
use proto::body::peek_i64;
use proto::{cmd, Ack, Body, BodyError, DecodeError, Frame, Header, HEADER_LEN, MAX_BODY_LEN};

const VERSIONS: [u8; 5] = [0, 1, 2, 3, 255];

fn body_of(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| i as u8 ^ 0x5a).collect::<Vec<u8>>())
}

/// Minimum body length of each fixed-layout command per version, from docs/protocol.md §6.13.
fn minimum(c: u8, version: u8) -> Option<usize> {
    Some(match c {
        3 => 4,                      // AUTH_STATUS §6.2
        4 | 8 if version == 0 => 20, // IM, GROUP_IM v0 §6.3
        4 | 8 => 24,                 // IM, GROUP_IM v≥1 §6.3
        15 => 4,                     // AUTH_TOKEN §6.1
        17 | 20 => 16,               // RT, ROOM_IM §6.6
        18 | 19 => 8,                // ENTER_ROOM, LEAVE_ROOM §6.7
        22 => 4,                     // UNREAD_COUNT §6.8
        26..=29 | 34 => 8,           // peer sync keys §6.9
        30..=33 | 35 => 16,          // group sync keys §6.10
        37 => 32,                    // METADATA §6.11
        64 => 36,                    // CUSTOMER_V2 §6.12
        _ => return None,
    })
}

#[test]
fn every_body_shorter_than_its_minimum_is_an_error() {
    let mut checked = 0;
    for c in 0..=255u8 {
        for v in VERSIONS {
            let Some(min) = minimum(c, v) else { continue };
            for len in 0..min {
                let err = Body::decode(c, v, &body_of(len)).unwrap_err();
                assert_eq!(
                    err,
                    BodyError::TooShort {
                        name: cmd::name(c),
                        len,
                        min
                    },
                    "{} v{v} len {len}",
                    cmd::name(c)
                );
                checked += 1;
            }
            // At the minimum, and with trailing bytes, a body with a valid AUTH_TOKEN shape decodes.
            let ok = if c == cmd::AUTH_TOKEN {
                Bytes::from_static(&[1, 0, 0, 0])
            } else {
                body_of(min)
            };
            let decoded = Body::decode(c, v, &ok)
                .unwrap_or_else(|e| panic!("{} v{v} at minimum: {e}", cmd::name(c)));
            assert_eq!(decoded.cmd(), c);
            assert!(Body::decode(c, v, &body_of(min + 7)).is_ok() || c == cmd::AUTH_TOKEN);
        }
    }
    assert!(checked > 1000, "checked {checked}");
}

#[test]
fn im_v0_lengths_between_20_and_23_are_valid_only_in_v0() {
    for len in 20..24 {
        let b = body_of(len);
        let Body::Im(m) = Body::decode(cmd::IM, 0, &b).unwrap() else {
            panic!("not IM")
        };
        assert_eq!((m.timestamp, m.content.len()), (0, len - 20));
        for v in [1, 2, 3] {
            assert!(matches!(
                Body::decode(cmd::GROUP_IM, v, &b),
                Err(BodyError::TooShort { min: 24, .. })
            ));
        }
    }
}

#[test]
fn raw_content_and_deprecated_bodies_accept_anything() {
    for c in [7u8, 21, 36, 24, 25] {
        for len in [0, 1, 100] {
            let b = body_of(len);
            let d = Body::decode(c, 1, &b).unwrap();
            assert_eq!(d.cmd(), c);
            assert_eq!(d.to_bytes(1), b);
        }
    }
}

#[test]
fn ping_and_pong_with_a_body_are_errors() {
    for v in VERSIONS {
        assert_eq!(
            Body::decode(cmd::PING, v, &Bytes::new()).unwrap(),
            Body::Ping
        );
        assert_eq!(
            Body::decode(cmd::PONG, v, &Bytes::new()).unwrap(),
            Body::Pong
        );
        for len in [1, 2, 12, 32767] {
            assert_eq!(
                Body::decode(cmd::PING, v, &body_of(len)),
                Err(BodyError::NotEmpty { name: "PING", len })
            );
            assert_eq!(
                Body::decode(cmd::PONG, v, &body_of(len)),
                Err(BodyError::NotEmpty { name: "PONG", len })
            );
        }
    }
}

fn ack(v: u8, bytes: &[u8]) -> Ack {
    match Body::decode(cmd::ACK, v, &Bytes::copy_from_slice(bytes)) {
        Ok(Body::Ack(a)) => a,
        other => panic!("ACK v{v} {bytes:?}: {other:?}"),
    }
}

#[test]
fn ack_missing_fields_read_as_zero() {
    // docs/protocol.md §6.4: the length of a received ACK is not checked; missing fields read as 0.
    for v in VERSIONS {
        for bytes in [&[][..], &[0x12], &[0x12, 0x34], &[0x12, 0x34, 0x56]] {
            assert_eq!(ack(v, bytes), Ack { seq: 0, status: 0 }, "v{v} {bytes:?}");
        }
        // Seq present, status missing.
        assert_eq!(
            ack(v, &[0x12, 0x34, 0x56, 0x78]),
            Ack {
                seq: 0x1234_5678,
                status: 0
            }
        );
    }
    // The status is read only from version 2; trailing bytes are ignored.
    for v in [0, 1] {
        assert_eq!(ack(v, &[0, 0, 0, 9, 0x40, 0xff]), Ack { seq: 9, status: 0 });
    }
    for v in [2, 3, 255] {
        assert_eq!(
            ack(v, &[0, 0, 0, 9, 0x40, 0xff]),
            Ack { seq: 9, status: 64 }
        );
        assert_eq!(
            ack(v, &[0xff, 0xff, 0xff, 0xff, 0x80]),
            Ack {
                seq: -1,
                status: -128
            }
        );
    }
}

fn auth(bytes: &[u8]) -> Result<Body, BodyError> {
    Body::decode(cmd::AUTH_TOKEN, 2, &Bytes::copy_from_slice(bytes))
}

#[test]
fn auth_token_field_overruns_are_errors() {
    // T runs past the end.
    assert_eq!(
        auth(&[1, 5, b'a', b'b']),
        Err(BodyError::AuthFieldOverrun { field: "token" })
    );
    assert_eq!(
        auth(&[1, 255, 0, 0, 0, 0]),
        Err(BodyError::AuthFieldOverrun { field: "token" })
    );
    // Token fits exactly but the mandatory device-id length byte is missing.
    assert!(matches!(
        auth(&[1, 2, b'a', b'b']),
        Err(BodyError::AuthFieldOverrun { .. })
    ));
    // D runs past the end.
    assert_eq!(
        auth(&[1, 1, b'a', 2, b'x']),
        Err(BodyError::AuthFieldOverrun { field: "device_id" })
    );
    assert_eq!(
        auth(&[1, 0, 255, 0, 0]),
        Err(BodyError::AuthFieldOverrun { field: "device_id" })
    );
    // Fields that fit exactly, and trailing bytes.
    let Ok(Body::AuthToken(a)) = auth(&[3, 1, b'a', 2, b'x', b'y']) else {
        panic!()
    };
    assert_eq!(
        (a.platform_id, &a.token[..], &a.device_id[..]),
        (3, &b"a"[..], &b"xy"[..])
    );
    let Ok(Body::AuthToken(b)) = auth(&[3, 1, b'a', 2, b'x', b'y', 9, 9, 9]) else {
        panic!()
    };
    assert_eq!(a, b);
    // Too short to hold anything.
    for len in 0..4 {
        assert!(matches!(
            auth(&[0, 0, 0][..len.min(3)]),
            Err(BodyError::TooShort { min: 4, .. })
        ));
    }
}

#[test]
fn unknown_commands_have_no_body_layout() {
    let known: &[u8] = &[
        3, 4, 5, 7, 8, 13, 14, 15, 17, 18, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33,
        34, 35, 36, 37, 64,
    ];
    let big = body_of(64);
    for c in 0..=255u8 {
        let r = Body::decode(c, 2, &big);
        if known.contains(&c) {
            // Known commands may still reject these bytes (PING, AUTH_TOKEN), but never as unknown.
            assert!(
                !matches!(r, Err(BodyError::UnknownCommand(_))),
                "{c}: {r:?}"
            );
        } else {
            assert_eq!(r, Err(BodyError::UnknownCommand(c)));
        }
    }
}

// ---- frame level (docs/protocol.md §3.1, §3.2) ----

fn raw_header(len: i32, seq: i32, c: u8) -> BytesMut {
    let mut b = BytesMut::with_capacity(HEADER_LEN);
    b.put_i32(len);
    b.put_i32(seq);
    b.put_u8(c);
    b.put_u8(2);
    b.put_u8(0);
    b.put_u8(0);
    b
}

#[test]
fn negative_and_oversized_lengths_fail_before_any_allocation() {
    let cases: &[(i32, DecodeError)] = &[
        (-1, DecodeError::NegativeLength(-1)),
        (i32::MIN, DecodeError::NegativeLength(i32::MIN)),
        (
            32768,
            DecodeError::TooLong {
                len: 32768,
                max: 32767,
            },
        ),
        (
            i32::MAX,
            DecodeError::TooLong {
                len: i32::MAX as usize,
                max: 32767,
            },
        ),
    ];
    for (len, want) in cases {
        let mut buf = raw_header(*len, 1, cmd::IM);
        let cap = buf.capacity();
        let before = buf.clone();
        assert_eq!(Frame::decode(&mut buf, MAX_BODY_LEN), Err(want.clone()));
        assert_eq!(buf.capacity(), cap, "length {len} reserved memory");
        assert_eq!(buf, before, "length {len} consumed input");
        assert_eq!(Header::parse(&before, MAX_BODY_LEN), Err(want.clone()));
    }
    // A smaller limit is honoured the same way.
    let mut buf = raw_header(101, 1, cmd::IM);
    assert_eq!(
        Frame::decode(&mut buf, 100),
        Err(DecodeError::TooLong { len: 101, max: 100 })
    );
}

#[test]
fn the_largest_body_is_accepted() {
    let mut buf = raw_header(MAX_BODY_LEN as i32, 7, cmd::SYSTEM);
    assert_eq!(Frame::decode(&mut buf, MAX_BODY_LEN), Ok(None));
    buf.put_bytes(0xab, MAX_BODY_LEN - 1);
    assert_eq!(Frame::decode(&mut buf, MAX_BODY_LEN), Ok(None));
    buf.put_u8(0xcd);
    let f = Frame::decode(&mut buf, MAX_BODY_LEN).unwrap().unwrap();
    assert_eq!((f.seq, f.cmd, f.body.len()), (7, cmd::SYSTEM, MAX_BODY_LEN));
    assert_eq!(f.body[MAX_BODY_LEN - 1], 0xcd);
    assert!(buf.is_empty());
}

#[test]
fn incomplete_input_is_not_consumed() {
    let full = sample_stream(3);
    for cut in 0..HEADER_LEN {
        let mut buf = BytesMut::from(&full[..cut]);
        assert_eq!(Frame::decode(&mut buf, MAX_BODY_LEN), Ok(None));
        assert_eq!(&buf[..], &full[..cut]);
    }
}

fn sample_bodies() -> Vec<(Body, u8)> {
    use proto::{AuthToken, Customer, GroupSyncKey, Im, Metadata, Rt};
    vec![
        (
            Body::AuthToken(AuthToken {
                platform_id: 1,
                token: Bytes::from_static(b"token"),
                device_id: Bytes::from_static(b"dev"),
            }),
            2,
        ),
        (
            Body::Im(Im {
                sender: 1,
                receiver: 2,
                timestamp: 3,
                msgid: 4,
                content: Bytes::from_static(b"hello"),
            }),
            1,
        ),
        (
            Body::GroupIm(Im {
                sender: 1,
                receiver: 2,
                timestamp: 0,
                msgid: 4,
                content: Bytes::from_static(b"g"),
            }),
            0,
        ),
        (Body::Ack(Ack { seq: 9, status: 1 }), 2),
        (Body::Ping, 2),
        (Body::Pong, 0),
        (
            Body::Rt(Rt {
                sender: 5,
                receiver: 6,
                content: Bytes::new(),
            }),
            1,
        ),
        (Body::EnterRoom(77), 1),
        (Body::SyncKey(1 << 40), 2),
        (
            Body::SyncGroup(GroupSyncKey {
                group_id: 3,
                sync_key: 4,
            }),
            2,
        ),
        (
            Body::Metadata(Metadata {
                sync_key: 10,
                prev_sync_key: 9,
            }),
            2,
        ),
        (
            Body::Customer(Customer {
                sender_appid: 1,
                sender: 2,
                receiver_appid: 3,
                receiver: 4,
                timestamp: 5,
                content: Bytes::from_static(b"{}"),
            }),
            3,
        ),
        (Body::Notification(Bytes::from_static(b"n")), 1),
    ]
}

/// `rounds` copies of every sample body as frames, seq numbered from 0.
fn sample_stream(rounds: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    let mut seq = 0;
    for _ in 0..rounds {
        for (b, v) in sample_bodies() {
            b.encode_frame(seq, v, (seq & 0x3f) as u8, &mut out);
            seq += 1;
        }
    }
    out.to_vec()
}

fn decode_all(buf: &mut BytesMut) -> Vec<Frame> {
    let mut frames = Vec::new();
    while let Some(f) = Frame::decode(buf, MAX_BODY_LEN).unwrap() {
        frames.push(f);
    }
    frames
}

#[test]
fn a_frame_delivered_one_byte_at_a_time_decodes_identically() {
    let stream = sample_stream(2);
    let whole = decode_all(&mut BytesMut::from(&stream[..]));
    assert_eq!(whole.len(), 2 * sample_bodies().len());

    let mut buf = BytesMut::new();
    let mut got = Vec::new();
    for &byte in &stream {
        buf.put_u8(byte);
        got.extend(decode_all(&mut buf));
    }
    assert!(buf.is_empty());
    assert_eq!(got, whole);
    for (f, (b, v)) in got.iter().zip(sample_bodies().into_iter().cycle()) {
        assert_eq!(f.version, v);
        assert_eq!(Body::decode(f.cmd, f.version, &f.body).unwrap(), b);
    }
}

#[test]
fn ten_thousand_frames_in_one_buffer_decode_in_order() {
    let mut buf = BytesMut::new();
    for i in 0..10_000i32 {
        let content = Bytes::from(vec![(i % 251) as u8; (i % 37) as usize]);
        Body::System(content).encode_frame(i, (i % 4) as u8, (i % 64) as u8, &mut buf);
        if i % 3 == 0 {
            Body::Ping.encode_frame(-i, 2, 0, &mut buf);
        }
    }
    let frames = decode_all(&mut buf);
    assert!(buf.is_empty());
    let systems: Vec<&Frame> = frames.iter().filter(|f| f.cmd == cmd::SYSTEM).collect();
    assert_eq!(systems.len(), 10_000);
    assert_eq!(frames.len(), 10_000 + 3334);
    for (i, f) in systems.iter().enumerate() {
        let i = i as i32;
        assert_eq!(f.seq, i);
        assert_eq!((f.version, f.flag), ((i % 4) as u8, (i % 64) as u8));
        assert_eq!(f.body.len(), (i % 37) as usize);
        assert!(f.body.iter().all(|&b| b == (i % 251) as u8));
    }
}

#[test]
fn an_error_after_good_frames_keeps_the_good_ones() {
    let mut buf = BytesMut::new();
    Body::Ping.encode_frame(1, 2, 0, &mut buf);
    buf.extend_from_slice(&raw_header(-5, 2, cmd::IM));
    let first = Frame::decode(&mut buf, MAX_BODY_LEN).unwrap().unwrap();
    assert_eq!((first.seq, first.cmd), (1, cmd::PING));
    assert_eq!(
        Frame::decode(&mut buf, MAX_BODY_LEN),
        Err(DecodeError::NegativeLength(-5))
    );
}

// ---- docs/protocol.md §5: whitelist ----

#[test]
fn client_allowed_matches_the_spec_whitelist_for_all_256_values() {
    // The commands marked "yes" in the "C→S" column of docs/protocol.md §5.
    let allowed: [u8; 19] = [
        4, 5, 8, 13, 14, 15, 17, 18, 19, 20, 22, 24, 25, 26, 30, 34, 35, 37, 64,
    ];
    for c in 0..=255u8 {
        assert_eq!(
            cmd::client_allowed(c),
            allowed.contains(&c),
            "cmd {c} ({})",
            cmd::name(c)
        );
    }
    assert_eq!((0..=255u8).filter(|&c| cmd::client_allowed(c)).count(), 19);
}

#[test]
fn persistent_commands() {
    // docs/protocol.md §5, "Stored" column: IM, GROUP_NOTIFICATION, GROUP_IM, SYSTEM and
    // CUSTOMER_V2 are stored.
    for c in 0..=255u8 {
        assert_eq!(
            cmd::is_persistent(c),
            [4, 7, 8, 21, 64].contains(&c),
            "cmd {c}"
        );
    }
}

#[test]
fn peek_i64_is_bounds_checked() {
    let b = [0, 0, 0, 0, 0, 0, 0, 1, 0xff];
    assert_eq!(peek_i64(&b, 0), Some(1));
    assert_eq!(peek_i64(&b, 1), Some(0x1ff));
    assert_eq!(peek_i64(&b, 2), None);
    assert_eq!(peek_i64(&b, usize::MAX), None);
    assert_eq!(peek_i64(&b, usize::MAX - 7), None);
}
