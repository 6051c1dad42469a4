//! Client protocols: each turns a socket into a stream of inbound messages and a sink of
//! [`super::state::Outbound`] items for [`super::conn::serve`].

pub mod text;
pub mod ws;
