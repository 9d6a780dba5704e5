//! Counting the images in an image model's answer as it streams past: Google bills the images
//! it returned (a prompt filtered for safety returns fewer than asked for), and the answer
//! reports no usage, so the count is the answer's usage.

use memchr::memmem::Finder;
use std::sync::LazyLock;

/// What names one image in an answer: Imagen's `predictions[].bytesBase64Encoded`, the OpenAI
/// surface's `data[].b64_json`. Inside a JSON string a quote is escaped, so text (a revised
/// prompt) cannot forge either; base64 holds no quotes.
const NEEDLES: [&[u8]; 2] = [b"\"bytesBase64Encoded\"", b"\"b64_json\""];

static FINDERS: LazyLock<[Finder<'static>; 2]> =
    LazyLock::new(|| [Finder::new(NEEDLES[0]), Finder::new(NEEDLES[1])]);

/// Bytes kept from one chunk to find a needle split across two.
const CARRY: usize = NEEDLES[0].len() - 1;

/// Images seen so far in a body fed chunk by chunk.
#[derive(Debug, Default)]
pub struct ImageCounter {
    count: u64,
    /// The end of what was fed (at most [`CARRY`] bytes).
    carry: Vec<u8>,
}

impl ImageCounter {
    pub fn feed(&mut self, chunk: &[u8]) {
        // Needles that start in the carry and end in this chunk.
        if !self.carry.is_empty() {
            let kept = self.carry.len();
            let mut window = self.carry.clone();
            window.extend_from_slice(&chunk[..chunk.len().min(CARRY)]);
            for (finder, needle) in FINDERS.iter().zip(NEEDLES) {
                self.count += finder
                    .find_iter(&window)
                    .filter(|&at| at < kept && at + needle.len() > kept)
                    .count() as u64;
            }
        }
        for finder in FINDERS.iter() {
            self.count += finder.find_iter(chunk).count() as u64;
        }
        self.carry.extend_from_slice(chunk);
        let excess = self.carry.len().saturating_sub(CARRY);
        self.carry.drain(..excess);
    }

    pub fn count(&self) -> u64 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_images_whatever_the_chunk_boundaries() {
        let body = r#"{"predictions": [{"bytesBase64Encoded": "aGVsbG8=", "mimeType": "image/png"}, {"raiFilteredReason": "filtered"}, {"bytesBase64Encoded": "d29ybGQ="}], "data": [{"b64_json": "eA==", "revised_prompt": "say \"b64_json\""}]}"#;
        for piece in [1, 2, 3, 7, 19, 20, 1000] {
            let mut c = ImageCounter::default();
            for chunk in body.as_bytes().chunks(piece) {
                c.feed(chunk);
            }
            assert_eq!(c.count(), 3, "pieces of {piece}");
        }
    }
}
