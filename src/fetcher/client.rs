//! What [`HttpFetcher`](super::HttpFetcher) posts grants over: any tower HTTP
//! service, named in bounds as [`HttpService`] (one sealed trait with a blanket
//! impl, as hyper-util names its connectors), and [`HttpsClient`], the default
//! one with the `rustls` feature.

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::Full;
use tower::Service;

use crate::error::BoxError;

/// hyper-util's legacy client over rustls (webpki roots), HTTP/1 and HTTP/2,
/// `https` or `http` (the https rule is checked on the token URL, the only URL
/// the fetcher ever requests).
#[cfg(feature = "rustls")]
#[cfg_attr(docsrs, doc(cfg(feature = "rustls")))]
pub type HttpsClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// What `HttpFetcher` stands for without its parameter: [`HttpsClient`] with
/// the `rustls` feature; without it there is no default client, and an
/// uninhabited type says so.
#[cfg(feature = "rustls")]
pub(super) type DefaultClient = HttpsClient;
#[cfg(not(feature = "rustls"))]
pub(super) type DefaultClient = std::convert::Infallible;

// === HttpService ===

/// A tower HTTP service that [`HttpFetcher`](super::HttpFetcher) posts grants
/// over: any `Service<Request<Full<Bytes>>>` that is `Clone + Send + Sync +
/// 'static`, with a `Send` future, an error that converts into a [`BoxError`],
/// and a `Send + 'static` response body whose data is `Send` and whose error
/// converts into a [`BoxError`]. hyper-util's client is one, and so is a tower
/// stack around it.
///
/// It is implemented for every such service and cannot be implemented
/// otherwise: name it in bounds.
pub trait HttpService:
    Service<
        Request<Full<Bytes>>,
        Response = Response<Self::ResponseBody>,
        Error: Into<BoxError>,
        Future: Send,
    >
    + Clone
    + Send
    + Sync
    + 'static
    + sealed::Sealed
{
    /// The body of the service's responses.
    type ResponseBody: Body<Data: Send, Error: Into<BoxError>> + Send + 'static;
}

impl<S, B> HttpService for S
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type ResponseBody = B;
}

mod sealed {
    use super::{Bytes, Full, Request, Service};

    /// Keeps [`HttpService`](super::HttpService) to the blanket impl.
    pub trait Sealed {}

    impl<S: Service<Request<Full<Bytes>>>> Sealed for S {}
}
