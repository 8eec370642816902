//! Plain TCP: `tokio::net::TcpStream` is a [`ByteStream`] as it is (no buffer of its own, no
//! extra copy: the hot path of issue 7's and issue 10's measurements).

use crate::ByteStream;
use bytes::BytesMut;
use std::io;
use std::task::{Context, Poll};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

impl ByteStream for TcpStream {
    fn poll_readable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        TcpStream::try_read_buf(self, buf)
    }

    async fn writable(&mut self) -> io::Result<()> {
        TcpStream::writable(self).await
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }

    async fn shutdown(&mut self) -> io::Result<()> {
        AsyncWriteExt::shutdown(self).await
    }
}
