//! Wire types of imsg: the public client API (`MessagingService`, package
//! `imsg.v1`, module [`v1`]) and the internal broker API (`BrokerService`,
//! package `imsg.internal.v1`, module [`internal::v1`]), which gateways and
//! broker nodes speak among themselves and clients never see.
//!
//! Generated at build time from `proto/imsg/` — the single source of truth
//! for every SDK — so there is nothing to edit here by hand. The modules
//! mirror the packages (the internal types name public ones by relative
//! paths).

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("imsg.v1");
}

pub mod internal {
    //! The internal broker API (`imsg.internal.v1`).

    #[allow(clippy::all, clippy::pedantic, missing_docs)]
    pub mod v1 {
        tonic::include_proto!("imsg.internal.v1");
    }
}

pub mod codec {
    //! The protobuf codec of every imsg service: prost's, with small initial
    //! buffers. tonic starts each stream's encode and decode buffers at
    //! 8 KiB; a gateway holds one of each per idle device stream, which was
    //! two thirds of its memory per connection. Buffers still grow on
    //! demand for large messages.
    //!
    //! A message that does not decode (bad wire format, a string that is
    //! not UTF-8) is `INVALID_ARGUMENT` naming what is wrong, not prost's
    //! default `INTERNAL`: the sender's bytes are at fault, not the server.

    use std::marker::PhantomData;

    use tonic::{
        Status,
        codec::{BufferSettings, Codec, DecodeBuf, Decoder},
    };
    use tonic_prost::ProstCodec;

    /// Initial buffer size per stream direction.
    const INITIAL_BUFFER: usize = 1024;
    /// How much is buffered before yielding to the transport (tonic's default).
    const YIELD_THRESHOLD: usize = 32 * 1024;

    /// prost encoding with [`INITIAL_BUFFER`]-sized buffers.
    #[derive(Debug, Clone, Copy)]
    pub struct CompactCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for CompactCodec<T, U> {
        fn default() -> Self {
            Self(PhantomData)
        }
    }

    impl<T, U> Codec for CompactCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
        type Decoder = CompactDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstCodec::<T, U>::raw_encoder(BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD))
        }

        fn decoder(&mut self) -> Self::Decoder {
            CompactDecoder(PhantomData)
        }
    }

    /// prost decoding; undecodable bytes are the sender's fault.
    #[derive(Debug)]
    pub struct CompactDecoder<U>(PhantomData<U>);

    impl<U: prost::Message + Default> Decoder for CompactDecoder<U> {
        type Item = U;
        type Error = Status;

        fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
            U::decode(buf)
                .map(Some)
                .map_err(|error| Status::invalid_argument(format!("the message could not be decoded: {error}")))
        }

        fn buffer_settings(&self) -> BufferSettings {
            BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
        }
    }
}

/// Encoded `FileDescriptorSet` of every imsg proto file, public and internal.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/imsg_descriptor.bin"));

/// The file of the public client API; the others are internal (gateways to
/// broker nodes, node to node).
pub const PUBLIC_API_FILE: &str = "imsg/v1/messaging.proto";

/// The descriptors of the public API only, for reflection on the client
/// port: clients have no business with the internal broker API.
pub fn public_file_descriptor_set() -> prost_types::FileDescriptorSet {
    use prost::Message as _;
    let mut set = prost_types::FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap_or_default();
    set.file.retain(|file| file.name() == PUBLIC_API_FILE);
    set
}
