//! One TCP connection to svnserve, carrying whole items each way.
//!
//! Reads are bounded: one message may take at most [`MAX_MESSAGE`] bytes, whatever the
//! server sends, so a hostile or broken server cannot grow this client's memory. Time is
//! bounded by the caller (the whole exchange runs under the poller's `timeout`).

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::RaError;
use super::wire::{self, Item};

/// The most one message from the server may take. The largest read here is a greeting
/// with a list of capabilities, a few hundred bytes.
const MAX_MESSAGE: usize = 256 * 1024;

pub(crate) struct Conn {
    stream: TcpStream,
    /// Bytes read but not yet parsed.
    buffer: Vec<u8>,
}

impl Conn {
    pub(crate) async fn connect(host: &str, port: u16) -> Result<Conn, RaError> {
        let stream = TcpStream::connect((host, port))
            .await
            .map_err(RaError::Connect)?;
        // Small requests answered at once: Nagle would hold each for an ACK.
        stream.set_nodelay(true).map_err(RaError::Connect)?;
        Ok(Conn {
            stream,
            buffer: Vec::with_capacity(4096),
        })
    }

    pub(crate) async fn send(&mut self, item: &Item) -> Result<(), RaError> {
        let mut bytes = Vec::with_capacity(128);
        item.encode(&mut bytes);
        bytes.push(b'\n');
        self.stream.write_all(&bytes).await.map_err(RaError::Broken)
    }

    /// The next whole item from the server.
    pub(crate) async fn receive(&mut self) -> Result<Item, RaError> {
        loop {
            if let Some((item, used)) = wire::parse(&self.buffer).map_err(RaError::Malformed)? {
                self.buffer.drain(..used);
                return Ok(item);
            }
            if self.buffer.len() >= MAX_MESSAGE {
                return Err(RaError::protocol(format!(
                    "a message larger than {} KiB",
                    MAX_MESSAGE / 1024
                )));
            }
            let room = (MAX_MESSAGE - self.buffer.len()).min(16 * 1024);
            let start = self.buffer.len();
            self.buffer.resize(start + room, 0);
            let read = self.stream.read(&mut self.buffer[start..]).await;
            let read = match read {
                Ok(n) => n,
                Err(error) => {
                    self.buffer.truncate(start);
                    return Err(RaError::Broken(error));
                }
            };
            self.buffer.truncate(start + read);
            if read == 0 {
                return Err(RaError::Broken(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                )));
            }
        }
    }
}
