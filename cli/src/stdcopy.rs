//! Docker's multiplexed stream ("stdcopy"): frames of an 8-byte header
//! `[stream, 0, 0, 0, len_be32]` followed by `len` bytes. Used for attach,
//! exec and logs of containers without a TTY.

/// Which stream a frame belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// Stream 3: an error from the daemon in the middle of the stream.
    SystemError,
}

impl StreamKind {
    fn from_byte(b: u8) -> Option<StreamKind> {
        match b {
            0 => Some(StreamKind::Stdin),
            1 => Some(StreamKind::Stdout),
            2 => Some(StreamKind::Stderr),
            3 => Some(StreamKind::SystemError),
            _ => None,
        }
    }
}

/// Header length of one frame.
pub const HEADER_LEN: usize = 8;

/// Incremental demultiplexer: feed it bytes as they arrive, get whole
/// frames back (a frame split across reads is kept until complete).
#[derive(Debug, Default)]
pub struct StdcopyDemuxer {
    pending: Vec<u8>,
}

/// A frame's stream id was not 0..=3: the data is not a multiplexed stream.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unrecognized stream id {0} in multiplexed stream")]
pub struct BadStreamId(pub u8);

impl StdcopyDemuxer {
    /// Appends `data` and returns every frame completed by it.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<(StreamKind, Vec<u8>)>, BadStreamId> {
        self.pending.extend_from_slice(data);
        let mut frames = Vec::new();
        let mut at = 0;
        while self.pending.len() - at >= HEADER_LEN {
            let h = &self.pending[at..at + HEADER_LEN];
            let kind = StreamKind::from_byte(h[0]).ok_or(BadStreamId(h[0]))?;
            let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]) as usize;
            if self.pending.len() - at - HEADER_LEN < len {
                break;
            }
            let start = at + HEADER_LEN;
            frames.push((kind, self.pending[start..start + len].to_vec()));
            at = start + len;
        }
        self.pending.drain(..at);
        Ok(frames)
    }

    /// Bytes of an incomplete frame still buffered.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Builds one frame (used by tests and handy for fakes).
pub fn encode_frame(kind: StreamKind, payload: &[u8]) -> Vec<u8> {
    let id = match kind {
        StreamKind::Stdin => 0,
        StreamKind::Stdout => 1,
        StreamKind::Stderr => 2,
        StreamKind::SystemError => 3,
    };
    let mut v = vec![id, 0, 0, 0];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demuxes_whole_and_split_frames() {
        let mut wire = encode_frame(StreamKind::Stdout, b"hello\n");
        wire.extend(encode_frame(StreamKind::Stderr, b"oops\n"));
        wire.extend(encode_frame(StreamKind::Stdout, b""));
        let mut d = StdcopyDemuxer::default();
        let got = d.push(&wire).unwrap();
        assert_eq!(
            got,
            vec![
                (StreamKind::Stdout, b"hello\n".to_vec()),
                (StreamKind::Stderr, b"oops\n".to_vec()),
                (StreamKind::Stdout, vec![]),
            ]
        );
        // Byte by byte: same frames, nothing early.
        let mut d = StdcopyDemuxer::default();
        let mut all = Vec::new();
        for b in &wire {
            all.extend(d.push(std::slice::from_ref(b)).unwrap());
        }
        assert_eq!(all.len(), 3);
        assert_eq!(all[1], (StreamKind::Stderr, b"oops\n".to_vec()));
        assert_eq!(d.pending_len(), 0);
    }

    #[test]
    fn keeps_partial_frame_and_rejects_bad_ids() {
        let wire = encode_frame(StreamKind::Stdout, b"abcdef");
        let mut d = StdcopyDemuxer::default();
        assert!(d.push(&wire[..10]).unwrap().is_empty());
        assert_eq!(d.pending_len(), 10);
        assert_eq!(
            d.push(&wire[10..]).unwrap(),
            vec![(StreamKind::Stdout, b"abcdef".to_vec())]
        );
        let mut d = StdcopyDemuxer::default();
        assert_eq!(d.push(b"hi there").unwrap_err(), BadStreamId(b'h'));
    }
}
