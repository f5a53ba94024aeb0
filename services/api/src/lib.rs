//! The API service (:3000): management plane.
