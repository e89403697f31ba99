//! Buffered I/O on a client socket.

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::limits::BUFFER_BYTES_INITIAL;
use crate::protocol::{next_frame, FrameError, FrameInfo};

pub struct ClientConn {
    pub stream: TcpStream,
    /// Bytes read from the client, not yet handled.
    pub rbuf: BytesMut,
    /// Bytes for the client, not yet written.
    pub wbuf: BytesMut,
}

#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("client closed the connection")]
    Closed,
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

impl ClientConn {
    pub fn new(stream: TcpStream) -> ClientConn {
        ClientConn {
            stream,
            rbuf: BytesMut::with_capacity(BUFFER_BYTES_INITIAL),
            wbuf: BytesMut::with_capacity(BUFFER_BYTES_INITIAL),
        }
    }

    /// Reads more bytes; `Closed` at end of stream. Cancel safe.
    pub async fn read_more(&mut self) -> Result<(), ConnError> {
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(ConnError::Closed),
            _ => Ok(()),
        }
    }

    /// Waits for one whole regular message at the start of `rbuf`.
    pub async fn read_frame(&mut self) -> Result<FrameInfo, ConnError> {
        loop {
            if let Some(info) = next_frame(&self.rbuf)? {
                return Ok(info);
            }
            self.read_more().await?;
        }
    }

    /// Writes out everything buffered for the client. Not cancel safe.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }
}
