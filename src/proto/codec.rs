//! The protobuf codec of every generated service and client (build.rs names it): prost's, with
//! a small first buffer for what a call sends. tonic's default reserves 8 KiB per call and keeps
//! it for the call's life; a WatchJob stream is open for hours and sends events of a few hundred
//! bytes, so with 10,000 streams that was 80 MB of buffers. A larger message grows the buffer
//! as it needs.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first size of a call's send buffer.
const SEND_BUFFER: usize = 512;
/// tonic's default: a stream hands what it encoded to HTTP/2 at least every 32 KiB.
const YIELD_THRESHOLD: usize = 32 * 1024;

pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(SEND_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(BufferSettings::default())
    }
}
