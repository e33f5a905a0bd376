//! The default table name of a model.

/// The table a model gets without `table = "..."`: its name in snake case,
/// pluralised with the common English rules. `User` → `users`,
/// `Category` → `categories`, `Address` → `addresses`,
/// `OrderItem` → `order_items`.
pub fn default_table_name(struct_name: &str) -> String {
    let mut snake = String::new();
    for (i, c) in struct_name.chars().enumerate() {
        if c.is_uppercase() {
            if i > 0 {
                snake.push('_');
            }
            snake.extend(c.to_lowercase());
        } else {
            snake.push(c);
        }
    }
    let bytes = snake.as_bytes();
    let n = bytes.len();
    if snake.ends_with('s')
        || snake.ends_with('x')
        || snake.ends_with('z')
        || snake.ends_with("ch")
        || snake.ends_with("sh")
    {
        snake.push_str("es");
    } else if n >= 2 && bytes[n - 1] == b'y' && !b"aeiou".contains(&bytes[n - 2]) {
        snake.pop();
        snake.push_str("ies");
    } else {
        snake.push('s');
    }
    snake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_snake_case_plurals() {
        assert_eq!(default_table_name("User"), "users");
        assert_eq!(default_table_name("Category"), "categories");
        assert_eq!(default_table_name("Address"), "addresses");
        assert_eq!(default_table_name("OrderItem"), "order_items");
        assert_eq!(default_table_name("Day"), "days");
        assert_eq!(default_table_name("Box"), "boxes");
    }
}
