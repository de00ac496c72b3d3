//! Forge gzips answers of 1000 bytes or more for a client that sends `Accept-Encoding: gzip`
//! (Starlette's `GZipMiddleware`, which forge-sim follows). Through the proxy the client gets
//! the backend's compressed bytes unchanged, and generations are still managed.

use http::StatusCode;
use reqwest::Method;
use serde_json::Value;

use crate::support::{client, journal_of, sim, Proxy};

/// One answer as the client received it, body not decoded.
struct Raw {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body inflated as JSON, after checking the answer is a whole gzip stream.
    fn gunzipped_json(&self) -> Value {
        assert_eq!(self.header("content-encoding"), Some("gzip"));
        assert_eq!(self.header("vary"), Some("Accept-Encoding"));
        assert_eq!(
            self.header("content-length"),
            Some(self.body.len().to_string().as_str()),
            "sent whole, with its compressed length"
        );
        serde_json::from_slice(&gunzip(&self.body)).expect("JSON inside the gzip stream")
    }
}

async fn send(method: Method, url: String, body: Option<&str>) -> Raw {
    let mut request = client()
        .request(method, url)
        .header("accept-encoding", "gzip, deflate");
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_owned());
    }
    let response = request.send().await.expect("request");
    Raw {
        status: response.status(),
        headers: response.headers().clone(),
        // reqwest here has no decompression: these are the bytes on the wire.
        body: response.bytes().await.expect("body"),
    }
}

#[tokio::test]
async fn listings_arrive_gzipped_byte_for_byte_as_the_backend_sent_them() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    for path in ["/sdapi/v1/options", "/sdapi/v1/samplers"] {
        let direct = send(Method::GET, format!("{}{path}", sim.url()), None).await;
        let proxied = send(Method::GET, proxy.url(path), None).await;
        assert_eq!(direct.status, StatusCode::OK, "{path}");
        assert_eq!(proxied.status, StatusCode::OK, "{path}");
        // forge-sim compresses deterministically, so the same answer is the same bytes.
        assert_eq!(direct.body, proxied.body, "{path}: the compressed bytes");
        let listing = proxied.gunzipped_json();
        match path {
            "/sdapi/v1/options" => {
                assert!(listing["forge_inference_memory"].is_number());
                assert!(listing["sd_model_checkpoint"].is_string());
            }
            _ => assert_eq!(listing[0]["name"], "DPM++ 2M"),
        }
    }
}

#[tokio::test]
async fn a_gzipped_generation_passes_through_unchanged_and_is_still_managed() {
    let sim = sim().await;
    let proxy = Proxy::start(&sim.url(), "").await;
    let body = r#"{"prompt": "a lighthouse", "steps": 2, "seed": 7, "subseed": 8, "force_task_id": "task(gzip)"}"#;
    let url = format!("{}/sdapi/v1/txt2img", sim.url());
    // Warm the model so the direct answer does not pay the first load.
    assert_eq!(
        send(Method::POST, url.clone(), Some(body)).await.status,
        StatusCode::OK
    );

    // The answer carries Forge's `job_timestamp`, to the second: a pair made within one second
    // is the same answer, and must then be the same compressed bytes.
    let mut matched = false;
    for _ in 0..5 {
        let direct = send(Method::POST, url.clone(), Some(body)).await;
        let proxied = send(Method::POST, proxy.url("/sdapi/v1/txt2img"), Some(body)).await;
        assert_eq!(proxied.status, StatusCode::OK);
        let (direct_json, proxied_json) = (direct.gunzipped_json(), proxied.gunzipped_json());
        assert_eq!(proxied_json["images"].as_array().map(Vec::len), Some(1));
        assert_eq!(proxied_json["parameters"]["prompt"], "a lighthouse");
        let info: Value =
            serde_json::from_str(proxied_json["info"].as_str().expect("info is a string"))
                .expect("info is JSON");
        assert_eq!(info["seed"], 7);
        // The proxy decided the memory for this generation and says so.
        assert!(proxied.header("x-forge-proxy-profile").is_some());
        assert!(proxied.header("x-forge-proxy-inference-memory").is_some());
        if direct_json == proxied_json {
            assert_eq!(direct.body, proxied.body, "the compressed bytes");
            matched = true;
            break;
        }
        let clock = |json: &Value| {
            let info: Value = serde_json::from_str(json["info"].as_str().unwrap()).unwrap();
            info["job_timestamp"].clone()
        };
        assert_ne!(
            clock(&direct_json),
            clock(&proxied_json),
            "the answers differ only by the clock"
        );
    }
    assert!(matched, "no pair of answers within one second");

    // The proxy's own options calls still read Forge's options: it set the memory it
    // computed before the generation it forwarded.
    let changes = journal_of(&sim, "options");
    assert!(
        changes
            .iter()
            .any(|change| change["changed"]["forge_inference_memory"].is_number()),
        "the proxy set forge_inference_memory: {changes:?}"
    );
    let generations = journal_of(&sim, "generation");
    let last = generations.last().expect("generations ran");
    assert_eq!(
        Some(&last["forge_inference_memory"]),
        changes
            .iter()
            .rev()
            .find_map(|c| c["changed"].get("forge_inference_memory")),
        "the forwarded generation ran with the proxy's value"
    );
}

/// A gzip member (RFC 1952) inflated, its CRC-32 and length checked.
fn gunzip(data: &[u8]) -> Vec<u8> {
    assert!(
        data.len() >= 18 && data[..3] == [0x1f, 0x8b, 8],
        "a gzip header"
    );
    let flags = data[3];
    let mut at = 10;
    if flags & 4 != 0 {
        at += 2 + usize::from(u16::from_le_bytes([data[at], data[at + 1]]));
    }
    for flag in [8, 16] {
        if flags & flag != 0 {
            at += data[at..]
                .iter()
                .position(|&b| b == 0)
                .expect("a terminated field")
                + 1;
        }
    }
    if flags & 2 != 0 {
        at += 2;
    }
    let (out, used) = inflate(&data[at..]);
    let trailer = &data[at + used..];
    let word = |i: usize| u32::from_le_bytes(trailer[i..i + 4].try_into().unwrap());
    assert_eq!(word(0), crc32(&out), "CRC-32");
    assert_eq!(word(4), out.len() as u32, "ISIZE");
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xedb8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Reads a deflate stream's bits, least significant first.
struct Bits<'a> {
    data: &'a [u8],
    at: usize,
    buffer: u32,
    count: u32,
}

impl Bits<'_> {
    fn take(&mut self, n: u32) -> u32 {
        while self.count < n {
            self.buffer |= u32::from(self.data[self.at]) << self.count;
            self.at += 1;
            self.count += 8;
        }
        let value = self.buffer & ((1u32 << n) - 1);
        self.buffer = self.buffer.checked_shr(n).unwrap_or(0);
        self.count -= n;
        value
    }
}

/// A canonical Huffman code: how many codes of each length, and the symbols in code order.
struct Huffman {
    counts: [u16; 16],
    symbols: Vec<u16>,
}

impl Huffman {
    fn new(lengths: &[u8]) -> Huffman {
        let mut counts = [0u16; 16];
        for &length in lengths {
            counts[usize::from(length)] += 1;
        }
        counts[0] = 0;
        let mut offsets = [0u16; 16];
        for length in 1..16 {
            offsets[length] = offsets[length - 1] + counts[length - 1];
        }
        let mut symbols = vec![0u16; lengths.len()];
        for (symbol, &length) in lengths.iter().enumerate() {
            if length != 0 {
                symbols[usize::from(offsets[usize::from(length)])] = symbol as u16;
                offsets[usize::from(length)] += 1;
            }
        }
        Huffman { counts, symbols }
    }

    fn decode(&self, bits: &mut Bits<'_>) -> u16 {
        let (mut code, mut first, mut index) = (0i32, 0i32, 0i32);
        for length in 1..16 {
            code |= bits.take(1) as i32;
            let count = i32::from(self.counts[length]);
            if code - first < count {
                return self.symbols[(index + code - first) as usize];
            }
            index += count;
            first = (first + count) << 1;
            code <<= 1;
        }
        panic!("an invalid Huffman code");
    }
}

const LENGTH_BASE: [u16; 29] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131,
    163, 195, 227, 258,
];
const LENGTH_EXTRA: [u32; 29] = [
    0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0,
];
const DISTANCE_BASE: [u16; 30] = [
    1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537,
    2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577,
];
const DISTANCE_EXTRA: [u32; 30] = [
    0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13,
    13,
];

/// A raw deflate stream (RFC 1951) inflated, and how many bytes of `data` it used.
fn inflate(data: &[u8]) -> (Vec<u8>, usize) {
    let mut bits = Bits {
        data,
        at: 0,
        buffer: 0,
        count: 0,
    };
    let mut out = Vec::new();
    loop {
        let last = bits.take(1) == 1;
        match bits.take(2) {
            0 => {
                // Stored: to the byte boundary, then LEN, NLEN and the bytes.
                bits.buffer = 0;
                bits.count = 0;
                let at = bits.at;
                let length = usize::from(u16::from_le_bytes([data[at], data[at + 1]]));
                out.extend_from_slice(&data[at + 4..at + 4 + length]);
                bits.at = at + 4 + length;
            }
            1 => {
                let mut lengths = [8u8; 288];
                lengths[144..256].fill(9);
                lengths[256..280].fill(7);
                let literals = Huffman::new(&lengths);
                let distances = Huffman::new(&[5u8; 30]);
                inflate_block(&mut bits, &mut out, &literals, &distances);
            }
            2 => {
                let literal_count = bits.take(5) as usize + 257;
                let distance_count = bits.take(5) as usize + 1;
                let code_count = bits.take(4) as usize + 4;
                const ORDER: [usize; 19] = [
                    16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15,
                ];
                let mut code_lengths = [0u8; 19];
                for &index in &ORDER[..code_count] {
                    code_lengths[index] = bits.take(3) as u8;
                }
                let codes = Huffman::new(&code_lengths);
                let mut lengths = Vec::with_capacity(literal_count + distance_count);
                while lengths.len() < literal_count + distance_count {
                    match codes.decode(&mut bits) {
                        symbol @ 0..=15 => lengths.push(symbol as u8),
                        16 => {
                            let previous = *lengths.last().expect("a length to repeat");
                            let times = 3 + bits.take(2) as usize;
                            lengths.extend(std::iter::repeat_n(previous, times));
                        }
                        17 => {
                            let times = 3 + bits.take(3) as usize;
                            lengths.extend(std::iter::repeat_n(0, times));
                        }
                        _ => {
                            let times = 11 + bits.take(7) as usize;
                            lengths.extend(std::iter::repeat_n(0, times));
                        }
                    }
                }
                let literals = Huffman::new(&lengths[..literal_count]);
                let distances = Huffman::new(&lengths[literal_count..]);
                inflate_block(&mut bits, &mut out, &literals, &distances);
            }
            _ => panic!("an invalid block type"),
        }
        if last {
            return (out, bits.at);
        }
    }
}

fn inflate_block(bits: &mut Bits<'_>, out: &mut Vec<u8>, literals: &Huffman, distances: &Huffman) {
    loop {
        let symbol = usize::from(literals.decode(bits));
        match symbol {
            0..=255 => out.push(symbol as u8),
            256 => return,
            _ => {
                let index = symbol - 257;
                let length =
                    usize::from(LENGTH_BASE[index]) + bits.take(LENGTH_EXTRA[index]) as usize;
                let code = usize::from(distances.decode(bits));
                let distance =
                    usize::from(DISTANCE_BASE[code]) + bits.take(DISTANCE_EXTRA[code]) as usize;
                let start = out.len() - distance;
                for i in 0..length {
                    out.push(out[start + i]);
                }
            }
        }
    }
}
