//! The HTTP toolkit that the served study (`study::serve`) and the app (`app`) share, below
//! both: secret tokens compared in constant time ([`tokens`]), which request paths reach which
//! files ([`files`]), and the pieces every route set uses ([`http`]): body limits checked
//! before a byte is read, hardening headers with a Content-Security-Policy, same-origin checks
//! for state-changing requests, and errors as one line of JSON. Escaping is `crate::html`.

pub mod files;
pub mod http;
pub mod tokens;
