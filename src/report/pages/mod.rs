//! One module per kind of page; each returns the page's HTML.

pub mod feature;
pub mod index;
pub mod one_to_one;
pub mod sharedness;
pub mod similarity;
pub mod training;
